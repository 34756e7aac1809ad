"""Sigmoid attention (Ramapuram et al. 2024, arXiv 2409.04431): ``o_i = sum_j sigmoid(s_ij + b) v_j``,
no normaliser. The naive reference against its definition and gradcheck; the Triton training kernels
(forward and backward) and the KV-cache kernels against the naive reference (fp32 in the interpreter,
bf16 on a GPU), through the registry (``attend``) as the model calls them."""

from __future__ import annotations

import math

import pytest
import torch

from softpick.ops.attention import AttentionSpec, attend, select
from softpick.ops.attention.naive import naive_attention
from softpick.ops.attention.spec import AttentionInputs
from softpick.ops.attention.triton.kv_cache import decode_attention

from kernel_env import DEVICE, DTYPE, assert_close  # skips the module without CUDA or the interpreter

BIAS = -math.log(64)  # b = -ln(n) for a context of n = 64


def test_naive_is_the_definition_and_gradchecks():
    q, k, v = (torch.randn(2, 6, 2, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    o, w = naive_attention(q, k, v, variant="sigmoid", sigmoid_bias=BIAS, return_weights=True)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    torch.testing.assert_close(w, torch.sigmoid(s + BIAS) * causal)
    torch.testing.assert_close(o, torch.einsum("bhqk,bkhd->bqhd", w, v))
    assert torch.autograd.gradcheck(
        lambda q, k, v: naive_attention(q, k, v, variant="sigmoid", sigmoid_bias=BIAS), (q, k, v))


def test_the_model_spec_takes_minus_log_context_and_hopper_declines():
    spec = AttentionSpec.from_attn_type("sigmoid", context=2048)
    assert spec.normaliser == "sigmoid" and spec.sigmoid_bias == pytest.approx(-math.log(2048))
    q = torch.randn(1, 4, 2, 64)
    from softpick.ops.attention.backends import CUTE

    assert "sigmoid" in CUTE.supports(spec, AttentionInputs(q, q, q))


# (name, B, T, H, HQ, D, causal, packed document lengths or None)
TRAINING = [
    ("causal-gqa", 2, 37, 1, 2, 32, True, None),
    ("full-odd-T", 1, 63, 2, 2, 16, False, None),
    ("varlen", 1, 50, 2, 4, 32, True, [13, 1, 36]),
]


@pytest.mark.parametrize("case", TRAINING, ids=[c[0] for c in TRAINING])
def test_triton_training_kernels_match_naive(case):
    name, B, T, H, HQ, D, causal, docs = case
    torch.manual_seed(0)
    q = torch.randn(B, T, HQ, D, device=DEVICE, dtype=DTYPE, requires_grad=True)
    k, v = (torch.randn(B, T, H, D, device=DEVICE, dtype=DTYPE, requires_grad=True) for _ in range(2))
    do = torch.randn(B, T, HQ, D, device=DEVICE, dtype=DTYPE)
    cu = None if docs is None else torch.tensor([0, *torch.tensor(docs).cumsum(0).tolist()], device=DEVICE,
                                                 dtype=torch.int32)
    spec = AttentionSpec("sigmoid", sigmoid_bias=BIAS)
    assert select(spec, AttentionInputs(q, k, v, causal=causal, cu_seqlens=cu), "triton").name == "triton-training"
    o = attend(q, k, v, spec, causal=causal, cu_seqlens=cu, impl="triton")
    grads = torch.autograd.grad(o, (q, k, v), do)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = naive_attention(*leaves, variant="sigmoid", sigmoid_bias=BIAS, causal=causal, cu_seqlens=cu)
    ref_grads = torch.autograd.grad(ref, leaves, do.double())
    for label, r, out in zip(("o", "dq", "dk", "dv"), (ref, *ref_grads), (o, *grads)):
        assert_close(f"{name} {label}", r, out)


# (name, B, Tq, Tk, H, HQ, D, padding: None / "left" / "empty" (the last row sees no key), splits)
KV_CACHE = [
    ("decode-split", 2, 1, 100, 2, 2, 32, None, 3),
    ("chunk-prefill-gqa-pad", 2, 5, 50, 1, 2, 32, "left", 2),
    ("empty-row", 2, 3, 40, 1, 2, 16, "empty", 2),
]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("case", KV_CACHE, ids=[c[0] for c in KV_CACHE])
def test_kv_cache_kernels_match_naive(case, causal):
    name, B, Tq, Tk, H, HQ, D, padding, splits = case
    torch.manual_seed(1)
    q = torch.randn(B, Tq, HQ, D, device=DEVICE).to(DTYPE)
    k, v = (torch.randn(B, Tk, H, D, device=DEVICE).to(DTYPE) for _ in range(2))
    mask = None
    if padding:  # left padding, a different length per row; "empty": the last row has no real key
        mask = torch.ones(B, Tk, dtype=torch.long, device=DEVICE)
        for b in range(B):
            mask[b, : 3 + 4 * b] = 0
        if padding == "empty":
            mask[-1] = 0
    out = decode_attention(q, k, v, variant="sigmoid", scale=None, causal=causal, attention_mask=mask, eps=1e-6,
                           splits=splits, sigmoid_bias=BIAS)
    ref = naive_attention(q.double(), k.double(), v.double(), variant="sigmoid", causal=causal,
                          attention_mask=mask, sigmoid_bias=BIAS)
    assert_close(f"{name} sigmoid", ref, out)
    if padding == "empty":
        assert out[-1].abs().max() == 0  # no key, no weight: o = 0 (sigmoid would give 1/2 to a masked key)
    with torch.no_grad():  # the registry sends these inputs to the same kernels
        spec = AttentionSpec("sigmoid", sigmoid_bias=BIAS)
        assert select(spec, AttentionInputs(q, k, v, causal=causal, attention_mask=mask), "triton").name == "triton-kv-cache"
