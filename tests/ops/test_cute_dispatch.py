"""Which kernels ``impl=None`` / ``"cute"`` / ``"triton"`` pick, with the GPU's compute capability mocked,
and the one-line reasons the Hopper kernels give when they cannot run (no GPU needed)."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import softpick.ops.attention as attention
from softpick.ops.attention import cute
from softpick.ops.attention.cute import pins


@pytest.fixture
def gpu(monkeypatch):
    """Fake CUDA tensors on a GPU whose capability the test sets, with the CuTe stack taken as present."""
    state = {"capability": (9, 0), "problem": None}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: state["capability"])
    monkeypatch.setattr(cute, "problem", lambda: state["problem"])
    monkeypatch.setattr("softpick.ops.attention.triton.training.triton_problem", lambda: None)
    with FakeTensorMode():
        yield state


def tensors(T=128, HQ=4, H=2, D=64, dtype=torch.bfloat16, Tk=None):
    q = torch.empty(1, T, HQ, D, dtype=dtype, device="cuda")
    k = torch.empty(1, Tk or T, H, D, dtype=dtype, device="cuda")
    return q, k, torch.empty_like(k)


NAMES = {"triton-training": "training", "triton-kv-cache": "kv-cache"}


def resolve(impl, variant, q, k, v, attention_mask=None, cu_seqlens=None, sink=None):
    """The backend's name, Triton's two as "training" / "kv-cache"."""
    spec = attention.AttentionSpec(variant, sink="none" if sink is None else "learned")
    inputs = attention.AttentionInputs(q, k, v, cu_seqlens=cu_seqlens, attention_mask=attention_mask, sink=sink)
    name = attention.select(spec, inputs, impl).name
    return NAMES.get(name, name)


def test_hopper_picks_cute_for_every_variant_and_head_dim(gpu):
    for D in cute.HEAD_DIMS:
        q, k, v = tensors(D=D)
        assert resolve(None, "softpick", q, k, v) == "cute"
        assert resolve(None, "softmax", q, k, v, sink=torch.empty(4, device="cuda")) == "cute"
    q, k, v = tensors(T=128, Tk=512)  # queries shorter than keys (chunked prefill)
    assert resolve(None, "softpick", q, k, v) == "cute"
    q, k, v = tensors(T=1, Tk=512)  # a decoding step: the split-K KV-cache kernels, unless forced
    assert resolve(None, "softpick", q, k, v) == "kv-cache"
    assert resolve("cute", "softpick", q, k, v) == "cute"
    q, k, v = tensors(dtype=torch.float16)
    assert resolve(None, "softpick", q, k, v) == "cute"


@pytest.mark.parametrize(
    "capability, change, reason",
    [
        ((8, 0), {}, "compute capability 8.0"),
        ((10, 0), {}, "compute capability 10.0"),
        ((9, 0), {"D": 96}, "head dims q/k 96"),
        ((9, 0), {"dtype": torch.float32}, "dtype torch.float32"),
    ],
)
def test_other_gpus_and_shapes_fall_back_to_triton(gpu, capability, change, reason):
    gpu["capability"] = capability
    q, k, v = tensors(**change)
    expected = "naive" if change.get("dtype") == torch.float32 else "training"  # Triton takes bf16/fp16 only
    assert resolve(None, "softpick", q, k, v) == expected
    with pytest.raises(NotImplementedError, match=reason) as info:
        resolve("cute", "softpick", q, k, v)
    assert "\n" not in str(info.value) and "use impl='triton'" in str(info.value)


def test_padding_masks_and_softpick_sinks_are_not_cute(gpu):
    q, k, v = tensors()
    mask = torch.ones(1, 128, dtype=torch.bool, device="cuda")
    assert resolve(None, "softpick", q, k, v, attention_mask=mask) == "kv-cache"
    with pytest.raises(NotImplementedError, match="padding masks"):
        resolve("cute", "softpick", q, k, v, attention_mask=mask)
    assert cute.supports(q, k, v, variant="softpick", attention_mask=None, sink=torch.empty(4)) == "a sink logit with softpick"


def test_missing_or_wrong_dsl_falls_back_and_cute_says_why(gpu):
    gpu["problem"] = "nvidia-cutlass-dsl is not installed (pip install 'softpick[hopper]')"
    q, k, v = tensors()
    assert resolve(None, "softpick", q, k, v) == "training"
    assert resolve("triton", "softpick", q, k, v) == "training"
    with pytest.raises(NotImplementedError, match=r"softpick\[hopper\]"):
        resolve("cute", "softpick", q, k, v)


def test_cpu_never_picks_cute():
    q = torch.randn(1, 8, 2, 64)
    assert resolve(None, "softpick", q, q, q) == "naive"
    with pytest.raises(NotImplementedError, match="device cpu"):
        resolve("cute", "softpick", q, q, q)


def test_version_check_names_the_installed_and_pinned_versions(monkeypatch):
    versions = dict(pins.PINS, **{"nvidia-cutlass-dsl": "4.7.0"})
    monkeypatch.setattr(pins.metadata, "version", lambda name: versions[name])
    message = pins._problem.__wrapped__()
    assert message == "nvidia-cutlass-dsl 4.7.0 is installed, the Hopper kernels need exactly 4.8.1 (pip install 'softpick[hopper]')"

    def missing(name):
        raise pins.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(pins.metadata, "version", missing)
    assert pins._problem.__wrapped__() == "nvidia-cutlass-dsl is not installed (pip install 'softpick[hopper]')"


def test_pins_match_the_hopper_extra():
    import tomllib
    from pathlib import Path

    extra = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["hopper"]
    for name, version in pins.PINS.items():
        assert f"{name}=={version}" in extra
