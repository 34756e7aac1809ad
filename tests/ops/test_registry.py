"""The attention spec and the backend registry: which backend ``impl=None`` / ``impl="x"`` picks, and the
one-line error when the named one cannot run the inputs (CPU only, no kernels run)."""

from __future__ import annotations

import pytest
import torch

from softpick.errors import UserError
from softpick.ops.attention import registry
from softpick.ops.attention.registry import NAIVE, Backend, attend, select
from softpick.ops.attention.spec import ATTN_TYPES, AttentionInputs, AttentionSpec, UnsupportedInputs


def inputs(T=8, HQ=2, D=16):
    q = torch.randn(1, T, HQ, D)
    return AttentionInputs(q, q, q)


def test_backends_in_priority_order_naive_last():
    assert [b.name for b in registry.BACKENDS] == ["cute", "triton-training", "triton-kv-cache", "sdpa", "naive"]


def test_attn_types_map_to_specs():
    from typing import get_args

    from softpick.ops.attention.spec import AttnType

    assert tuple(ATTN_TYPES) == get_args(AttnType)  # the Literal and the table name the same attn_types
    assert {t: (s.normaliser, s.sink) for t in ATTN_TYPES for s in [AttentionSpec.from_attn_type(t)]} == ATTN_TYPES
    with pytest.raises(ValueError, match="attn_type must be one of"):
        AttentionSpec.from_attn_type("sigmoid_softpick")
    with pytest.raises(ValueError, match="a sink logit is a softmax variant"):
        AttentionSpec("softpick", sink="zero")
    with pytest.raises(ValueError, match="normaliser must be one of"):
        AttentionSpec("relu")


def test_first_supporting_backend_wins_and_a_named_one_says_why_not(monkeypatch):
    calls = []
    fake = Backend("fake", "triton", supports=lambda s, x: None if s.normaliser == "softmax" else "softpick (fake)",
                   run=lambda s, x: calls.append(s) or torch.zeros_like(x.q))
    shy = Backend("shy", "triton", supports=lambda s, x: None, run=fake.run, passed_over=lambda s, x: "asked only")
    monkeypatch.setattr(registry, "BACKENDS", [shy, fake, NAIVE])
    softmax, softpick = AttentionSpec("softmax"), AttentionSpec("softpick")
    x = inputs()
    assert select(softmax, x).name == "fake"  # shy supports it but is passed over without impl
    assert select(softpick, x).name == "naive"
    assert select(softpick, x, "triton").name == "shy"
    monkeypatch.setattr(registry, "BACKENDS", [fake, NAIVE])
    with pytest.raises(UnsupportedInputs) as info:
        select(softpick, x, "triton")
    assert str(info.value) == "impl='triton' cannot run these inputs: softpick (fake); use impl='naive'."
    assert isinstance(info.value, UserError)
    assert attend(x.q, x.k, x.v, softmax).abs().sum() == 0 and calls == [softmax]


def test_an_impl_with_no_backend_here_runs_naive(monkeypatch):
    """The shipped copy of the registry holds only the naive backend: a config's attn_impl still loads."""
    monkeypatch.setattr(registry, "BACKENDS", [NAIVE])
    assert select(AttentionSpec(), inputs(), "cute") is NAIVE
    with pytest.raises(ValueError, match="impl must be one of"):
        select(AttentionSpec(), inputs(), "cuda")


def test_cpu_default_is_naive_and_sinks_follow_the_spec():
    x = inputs()
    assert select(AttentionSpec(), x).name == "naive"
    plus_one = attend(x.q, x.k, x.v, AttentionSpec("softmax", sink="zero"))
    learned = attend(x.q, x.k, x.v, AttentionSpec("softmax", sink="learned"), sink=torch.zeros(2))
    torch.testing.assert_close(plus_one, learned)
    with pytest.raises(ValueError, match="spec's sink is 'none'"):
        attend(x.q, x.k, x.v, AttentionSpec("softmax"), sink=torch.zeros(2))
