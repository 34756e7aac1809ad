"""The reference ops against the float64 textbook formula, gradients, edge cases and input checks."""

from __future__ import annotations

import math

import pytest
import torch

from softpick.ops import softmax_attention, softpick, softpick_attention
from softpick.ops.attention.naive import naive_attention

EPS = 1e-6


def formula_weights(s: torch.Tensor, visible: torch.Tensor, variant: str) -> torch.Tensor:
    """Weights straight from the definition in float64, no stabilisation (scores are moderate)."""
    s = s.double()
    if variant == "softpick":
        e = torch.expm1(s).masked_fill(~visible, 0.0)  # exp(s) - 1, masked keys left out
        return torch.relu(e) / (e.abs().sum(-1, keepdim=True) + EPS)
    e = torch.exp(s).masked_fill(~visible, 0.0)
    den = e.sum(-1, keepdim=True)
    return e / torch.where(den > 0, den, torch.ones_like(den))


def formula_attention(q, k, v, *, variant, causal, cu_seqlens=None, attention_mask=None):
    """o = W v with W from :func:`formula_weights`, looping over batch and heads for clarity."""
    B, Tq, HQ, D = q.shape
    Tk, H = k.shape[1], k.shape[2]
    o = torch.zeros(B, Tq, HQ, v.shape[-1], dtype=torch.float64)
    q_pos = torch.arange(Tq) + Tk - Tq
    k_pos = torch.arange(Tk)
    doc = torch.zeros(Tk, dtype=torch.long)
    if cu_seqlens is not None:
        for start in cu_seqlens[1:-1].tolist():
            doc[start:] += 1
    for b in range(B):
        visible = torch.ones(Tq, Tk, dtype=torch.bool)
        if causal:
            visible &= k_pos[None, :] <= q_pos[:, None]
        if cu_seqlens is not None:
            visible &= doc[q_pos][:, None] == doc[None, :]
        if attention_mask is not None:
            visible &= attention_mask[b].bool()[None, :]
        for h in range(HQ):
            kh = h // (HQ // H)
            s = q[b, :, h].double() @ k[b, :, kh].double().T / math.sqrt(D)
            o[b, :, h] = formula_weights(s, visible, variant) @ v[b, :, kh].double()
    return o


def case_id(case: dict) -> str:
    return "-".join(f"{key}{val}" for key, val in case.items() if not isinstance(val, (list, type(None))))


CASES = [
    dict(B=2, Tq=17, Tk=17, HQ=2, H=2, D=16, causal=True),
    dict(B=1, Tq=1, Tk=1, HQ=1, H=1, D=8, causal=True),
    dict(B=2, Tq=63, Tk=63, HQ=4, H=1, D=32, causal=True),  # GQA, odd T
    dict(B=2, Tq=5, Tk=33, HQ=4, H=2, D=16, causal=True),  # q shorter than k (KV cache)
    dict(B=2, Tq=1, Tk=9, HQ=2, H=2, D=8, causal=True),  # one decode step
    dict(B=3, Tq=12, Tk=20, HQ=2, H=1, D=16, causal=False),
    dict(B=1, Tq=24, Tk=24, HQ=2, H=2, D=16, causal=True, cu_seqlens=[0, 1, 7, 8, 24]),  # varlen, len-1 docs
    dict(B=1, Tq=24, Tk=24, HQ=2, H=1, D=16, causal=False, cu_seqlens=[0, 10, 24]),
    dict(B=3, Tq=9, Tk=9, HQ=2, H=2, D=16, causal=True, pad=[[1] * 9, [0] * 3 + [1] * 6, [1] * 5 + [0] * 4]),
]


@pytest.mark.parametrize("variant", ["softpick", "softmax"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_naive_matches_float64_formula(case, variant):
    q = torch.randn(case["B"], case["Tq"], case["HQ"], case["D"]) * 2
    k = torch.randn(case["B"], case["Tk"], case["H"], case["D"]) * 2
    v = torch.randn(case["B"], case["Tk"], case["H"], case["D"])
    cu = torch.tensor(case["cu_seqlens"], dtype=torch.int32) if "cu_seqlens" in case else None
    pad = torch.tensor(case["pad"]) if "pad" in case else None
    op = softpick_attention if variant == "softpick" else softmax_attention
    got = op(q, k, v, causal=case["causal"], cu_seqlens=cu, attention_mask=pad, impl="naive")
    want = formula_attention(q, k, v, variant=variant, causal=case["causal"], cu_seqlens=cu, attention_mask=pad)
    assert got.shape == (case["B"], case["Tq"], case["HQ"], case["D"])
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_softpick_function_matches_formula_and_excludes_masked():
    x = torch.randn(4, 11, dtype=torch.float64) * 3
    mask = torch.rand(4, 11) > 0.3
    got = softpick(x, mask=mask)
    want = formula_weights(x, mask, "softpick")
    torch.testing.assert_close(got, want)
    # -inf means "masked": it must not add |0 - 1| = 1 to the denominator.
    torch.testing.assert_close(softpick(x.masked_fill(~mask, float("-inf"))), want)


def test_softpick_rows_need_not_sum_to_one():
    y = softpick(torch.tensor([[-1.0, -2.0, -3.0], [2.0, -2.0, 0.0]]))
    assert torch.equal(y[0], torch.zeros(3))  # all-negative row is all zeros
    assert 0 < y[1].sum() < 1


def test_gradcheck_float64():
    """Autograd through the stable form equals finite differences, including masked and varlen rows."""
    q = torch.randn(1, 10, 2, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 10, 1, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 10, 1, 3, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, 1, 6, 10])
    for variant in ("softpick", "softmax"):
        fn = lambda q, k, v: naive_attention(q, k, v, variant=variant, cu_seqlens=cu)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (q, k, v))
    pad = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1]])
    fn = lambda q, k, v: naive_attention(q, k, v, attention_mask=pad)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("variant", ["softpick", "softmax"])
def test_edge_cases_finite(variant):
    """All-negative rows, scores of magnitude 1e4, and a query that sees no key: finite o and grads."""
    op = softpick_attention if variant == "softpick" else softmax_attention
    D = 8
    q = torch.randn(2, 6, 2, D)
    q[0] *= 1e4 / q[0].norm(dim=-1, keepdim=True)  # scores of magnitude ~1e4
    k = torch.randn(2, 6, 2, D)
    k[1] = -q[1].mean(dim=0, keepdim=True).sign() * 5  # pushes many scores of batch 1 below 0
    v = torch.randn(2, 6, 2, D)
    pad = torch.ones(2, 6, dtype=torch.long)
    pad[1, :] = 0  # batch row 1: no visible key at all
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    o = op(q, k, v, attention_mask=pad, impl="naive")
    o.square().sum().backward()
    for t in (o, q.grad, k.grad, v.grad):
        assert torch.isfinite(t).all()
    assert torch.equal(o[1], torch.zeros_like(o[1]))


def test_all_negative_scores_give_zero_output():
    q = torch.ones(1, 4, 1, 4)
    k = -torch.ones(1, 4, 1, 4)
    v = torch.randn(1, 4, 1, 4)
    assert torch.equal(softpick_attention(q, k, v, impl="naive"), torch.zeros(1, 4, 1, 4))


def test_large_scores_match_hard_pick():
    """With huge scores softpick puts (almost) all weight on the largest positive score."""
    q = torch.tensor([[[[100.0, 0.0]]]])
    k = torch.tensor([[[[1.0, 0.0]], [[2.0, 0.0]], [[-3.0, 0.0]]]])
    v = torch.tensor([[[[1.0]], [[2.0]], [[3.0]]]])
    o = softpick_attention(q, k, v, causal=False, scale=1.0, impl="naive")
    torch.testing.assert_close(o, torch.tensor([[[[2.0]]]]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(q=torch.randn(2, 3, 4)), "q must have 4 dims"),
        (dict(k=torch.randn(1, 5, 3, 8), v=torch.randn(1, 5, 3, 8)), "multiple of the number of key/value heads"),
        (dict(cu_seqlens=torch.tensor([0, 3, 2, 5])), "strictly increasing"),
        (dict(cu_seqlens=torch.tensor([0, 2, 4])), "end at the packed length 5"),
        (dict(attention_mask=torch.ones(1, 4)), "attention_mask must have shape"),
        (dict(impl="cuda"), "impl must be one of"),
        (dict(q=torch.randn(1, 6, 4, 8)), "more positions"),
        (dict(v=torch.randn(1, 4, 2, 8)), "k and v must agree"),
    ],
)
def test_bad_input_raises_clear_error(kwargs, message):
    args = dict(q=torch.randn(1, 5, 4, 8), k=torch.randn(1, 5, 2, 8), v=torch.randn(1, 5, 2, 8))
    args.update(kwargs)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(ValueError, match=message):
        softpick_attention(q, k, v, **args)


def test_cu_seqlens_needs_batch_one():
    q = torch.randn(2, 4, 1, 8)
    with pytest.raises(ValueError, match="batch size must be 1 with cu_seqlens, got 2"):
        softpick_attention(q, q, q, cu_seqlens=torch.tensor([0, 2, 4]))


@pytest.mark.parametrize(
    "cu, max_seqlen, message",
    [
        ([0, 2, 5], 2, "max_seqlen must be at least the longest document of cu_seqlens, 3, got 2"),
        (None, 5, "max_seqlen \\(5\\) is the longest document of cu_seqlens; pass cu_seqlens too"),
    ],
    ids=["too-small", "without-cu_seqlens"],
)
def test_wrong_max_seqlen_raises(cu, max_seqlen, message):
    """A max_seqlen below the longest document would leave rows uncomputed in the kernels: eager calls check it."""
    q = torch.randn(1, 5, 1, 8)
    cu = None if cu is None else torch.tensor(cu)
    with pytest.raises(ValueError, match=message):
        softpick_attention(q, q, q, cu_seqlens=cu, max_seqlen=max_seqlen)
    if cu is not None:  # the longest document, or any upper bound (the trainer passes a bucketed one)
        assert softpick_attention(q, q, q, cu_seqlens=cu, max_seqlen=3).shape == q.shape
        assert softpick_attention(q, q, q, cu_seqlens=cu, max_seqlen=8).shape == q.shape


def test_sdpa_rejected_for_softpick():
    q = torch.randn(1, 4, 1, 8)
    with pytest.raises(ValueError, match="softmax only"):
        softpick_attention(q, q, q, impl="sdpa")


@pytest.mark.parametrize("tq", [1, 3, 7])
@pytest.mark.parametrize("pad_left", [True, False])
def test_sdpa_softmax_matches_naive(pad_left, tq):
    q, k, v = torch.randn(2, tq, 4, 8), torch.randn(2, 7, 2, 8), torch.randn(2, 7, 2, 8)
    pad = torch.ones(2, 7, dtype=torch.long)
    if pad_left:
        pad[0, :7] = 0  # this row sees nothing: both must give zeros, not NaN
    else:
        pad[1, 5:] = 0
    for mask in (None, pad):
        got = softmax_attention(q, k, v, attention_mask=mask, impl="sdpa")
        want = softmax_attention(q, k, v, attention_mask=mask, impl="naive")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_sink_matches_the_extra_logit_formula_in_float64():
    """A sink b is a key with logit b and value 0: softmax over [s, b], weights of the real keys kept."""
    B, T, HQ, D = 2, 7, 3, 8
    q, k, v = (torch.randn(B, T, HQ, D, dtype=torch.float64) for _ in range(3))
    sink = torch.tensor([-1.0, 0.0, 2.5], dtype=torch.float64)
    o, w = naive_attention(q, k, v, variant="softmax", sink=sink, return_weights=True)
    s = torch.einsum("bqhd,bthd->bhqt", q, k) * D**-0.5
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    full = torch.cat([s, sink.view(1, HQ, 1, 1).expand(B, HQ, T, 1)], dim=-1).softmax(-1)[..., :T]
    torch.testing.assert_close(w, full)
    torch.testing.assert_close(o, torch.einsum("bhqt,bthd->bqhd", full, v))
    assert (w.sum(-1) < 1).all()
    with pytest.raises(ValueError, match="sink logit is a softmax variant"):
        naive_attention(q, k, v, variant="softpick", sink=sink)


@pytest.mark.parametrize("variant", ["softpick", "softmax"])
def test_packed_documents_run_one_at_a_time(variant, monkeypatch):
    """cu_seqlens: the naive path attends per document (memory O(longest^2), not O(T^2)) and gives the
    block-diagonal mask's outputs and gradients."""
    from softpick.ops.attention import naive as naive_mod

    torch.manual_seed(0)
    cu = torch.tensor([0, 5, 6, 19, 32], dtype=torch.int32)
    q, k, v = (torch.randn(1, 32, 4, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    k2 = k.detach()[:, :, :2].clone().requires_grad_()  # GQA: 4 query heads on 2 key/value heads
    v2 = v.detach()[:, :, :2].clone().requires_grad_()
    sink = torch.linspace(-1, 1, 4, dtype=torch.float64) if variant == "softmax" else None
    # the reference: one T x T block-diagonal mask (return_weights keeps that path)
    ref, _ = naive_attention(q, k2, v2, variant=variant, cu_seqlens=cu, return_weights=True, sink=sink)
    ref.square().sum().backward()
    grads = [t.grad.clone() for t in (q, k2, v2)]
    for t in (q, k2, v2):
        t.grad = None
    seen = []
    real = naive_mod.visible_keys
    monkeypatch.setattr(naive_mod, "visible_keys", lambda *a, **kw: seen.append(a[2]) or real(*a, **kw))
    out = softmax_attention(q, k2, v2, cu_seqlens=cu, impl="naive", sink=sink) if variant == "softmax" else \
        softpick_attention(q, k2, v2, cu_seqlens=cu, impl="naive")
    assert max(seen) == 13  # the longest document, never the packed row's 32
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    out.square().sum().backward()
    for got, want in zip((q.grad, k2.grad, v2.grad), grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
