"""KV-cache Triton kernels (decode, chunked prefill, padding, split-K) against the naive op.

Without a GPU they run in the Triton interpreter in float32 (tests/conftest.py); on a GPU in bf16.
The interpreter tiles are BM = 16 rows and BN = 16 keys, so the cases below cross several key blocks,
several splits, and row blocks that hold more than one query position of a GQA group.
"""

from __future__ import annotations

import pytest
import torch

from softpick.ops.attention import softmax_attention, softpick_attention
from softpick.ops.attention.triton.kv_cache import decode_attention, num_splits
from softpick.ops.attention.naive import naive_attention

from kernel_env import DEVICE, DTYPE, assert_close  # skips the module without CUDA or the interpreter


# (name, B, Tq, Tk, H, HQ, D, mask, splits, q multiplier)
CASES = [
    ("decode", 2, 1, 37, 2, 2, 32, None, 1, 1.0),
    ("decode-split", 2, 1, 100, 2, 2, 32, None, 3, 1.0),
    ("decode-gqa4-split", 1, 1, 70, 2, 8, 64, None, 4, 1.0),
    ("chunk-prefill-gqa", 2, 5, 50, 1, 2, 32, None, 2, 1.0),
    ("prefill-left-pad", 3, 20, 20, 2, 4, 16, "left", 1, 1.0),
    ("decode-left-pad-split", 3, 1, 45, 2, 4, 16, "left", 3, 1.0),
    ("decode-right-pad", 2, 1, 30, 1, 1, 48, "right", 2, 1.0),
    ("holes-and-empty-row", 2, 3, 33, 1, 2, 32, "holes", 2, 1.0),
    ("negative-scores", 1, 4, 40, 1, 1, 16, None, 2, -1.0),
    ("large-scores", 1, 2, 40, 1, 2, 32, None, 3, 20.0),
]


def make_mask(kind: str | None, B: int, Tk: int) -> torch.Tensor | None:
    if kind is None:
        return None
    mask = torch.ones(B, Tk, dtype=torch.long)
    for b in range(B):
        n = 3 + 4 * b  # a different padding length per row
        if kind == "left":
            mask[b, :n] = 0
        elif kind == "right":
            mask[b, Tk - n:] = 0
        else:  # holes; the last row sees no key at all
            mask[b, torch.randperm(Tk)[: Tk // 3]] = 0
            if b == B - 1:
                mask[b] = 0
    return mask.to(DEVICE)


def inputs(B, Tq, Tk, H, HQ, D, mult):
    q = torch.randn(B, Tq, HQ, D, device=DEVICE) * mult
    k, v = torch.randn(B, Tk, H, D, device=DEVICE), torch.randn(B, Tk, H, D, device=DEVICE)
    if mult < 0:  # every score negative: q opposite to every key's mean direction
        k = k.abs() + 0.1
        q = -q.abs() - 0.1
    return q.to(DTYPE), k.to(DTYPE), v.to(DTYPE)




@pytest.mark.parametrize("variant", ["softpick", "softmax"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_decode_matches_naive(case, causal, variant):
    name, B, Tq, Tk, H, HQ, D, mask_kind, splits, mult = case
    q, k, v = inputs(B, Tq, Tk, H, HQ, D, mult)
    mask = make_mask(mask_kind, B, Tk)
    out = decode_attention(q, k, v, variant=variant, scale=None, causal=causal, attention_mask=mask, eps=1e-6,
                           splits=splits)
    ref = naive_attention(q.double(), k.double(), v.double(), variant=variant, causal=causal,
                          attention_mask=mask, eps=1e-6)
    assert out.shape == (B, Tq, HQ, D) and out.dtype == DTYPE
    assert_close(f"{name} {variant}", ref, out)
    if mask_kind == "holes":
        assert out[-1].abs().max() == 0  # the row that sees no key gives exactly 0
    if mult < 0 and variant == "softpick":
        assert out.abs().max() == 0  # softpick of all-negative scores is exactly 0


def test_cache_layout_views_are_read_in_place():
    """k, v as [B, T, H, D] views of [B, H, T_max, D] buffers (a transformers cache), values past T ignored."""
    B, H, HQ, D, T, T_max = 2, 2, 4, 32, 29, 48
    k_buf = torch.randn(B, H, T_max, D, device=DEVICE, dtype=DTYPE)
    v_buf = torch.randn(B, H, T_max, D, device=DEVICE, dtype=DTYPE)
    k, v = k_buf[:, :, :T].transpose(1, 2), v_buf[:, :, :T].transpose(1, 2)
    assert not k.is_contiguous()
    q = torch.randn(B, 1, HQ, D, device=DEVICE, dtype=DTYPE)
    for variant in ("softpick", "softmax"):
        out = decode_attention(q, k, v, variant=variant, scale=None, causal=True, attention_mask=None, eps=1e-6,
                               splits=2)
        ref = naive_attention(q.double(), k.double(), v.double(), variant=variant)
        assert_close(variant, ref, out)


def test_split_count_does_not_change_the_result():
    q, k, v = inputs(1, 1, 200, 1, 2, 32, 1.0)
    outs = [decode_attention(q, k, v, variant="softpick", scale=None, causal=True, attention_mask=None, eps=1e-6,
                             splits=s) for s in (1, 2, 5, 13)]
    for s, out in zip((2, 5, 13), outs[1:]):
        assert_close(f"{s} splits", outs[0], out)


def test_num_splits_fills_the_device_but_keeps_long_splits():
    q = torch.empty(1, 1, 16, 64)
    assert num_splits(q, torch.empty(1, 8192, 16, 64), block_rows=16) == 1  # 16 programs >= 2 x 4 "SMs"
    assert num_splits(torch.empty(1, 1, 2, 64), torch.empty(1, 8192, 1, 64), block_rows=16) == 8
    assert num_splits(torch.empty(1, 1, 2, 64), torch.empty(1, 300, 1, 64), block_rows=16) == 2
    # 3 programs: 2 splits (6 programs <= 2 x 4), not 3 (9, a third wave on one of the 4 "SMs")
    assert num_splits(torch.empty(3, 1, 2, 64), torch.empty(3, 8192, 1, 64), block_rows=16) == 2


@pytest.mark.parametrize("op", [softpick_attention, softmax_attention], ids=["softpick", "softmax"])
def test_public_ops_dispatch_kv_cache_inputs_to_the_decode_kernel(op, monkeypatch):
    """impl='triton' with T_q < T_k or a padding mask and no grad runs the decode kernels (not naive)."""
    from softpick.ops.attention.triton import kv_cache as decode

    calls = []
    real = decode.decode_attention
    monkeypatch.setattr(decode, "decode_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v = inputs(2, 3, 19, 1, 2, 16, 1.0)
    mask = make_mask("left", 2, 19)
    with torch.no_grad():
        out = op(q, k, v, attention_mask=mask, impl="triton")
    ref = op(q.double(), k.double(), v.double(), attention_mask=mask, impl="naive")
    assert calls == [1]
    assert_close("dispatch", ref, out)


def test_torch_compile_fullgraph():
    q, k, v = inputs(1, 1, 40, 1, 2, 16, 1.0)

    def attend(q, k, v):
        return softpick_attention(q, k, v, impl="triton")

    with torch.no_grad():
        compiled = torch.compile(attend, backend="aot_eager", fullgraph=True)
        assert_close("compiled", attend(q, k, v), compiled(q, k, v))


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in ("decode-split", "prefill-left-pad", "holes-and-empty-row")],
                         ids=lambda c: c[0])
def test_decode_with_sink_matches_naive(case):
    name, B, Tq, Tk, H, HQ, D, mask_kind, splits, mult = case
    q, k, v = inputs(B, Tq, Tk, H, HQ, D, mult)
    mask = make_mask(mask_kind, B, Tk)
    sink = torch.linspace(-1.0, 2.0, HQ, device=DEVICE)
    out = decode_attention(q, k, v, variant="softmax", scale=None, causal=True, attention_mask=mask, eps=1e-6,
                           splits=splits, sink=sink)
    ref = naive_attention(q.double(), k.double(), v.double(), variant="softmax", attention_mask=mask,
                          sink=sink.double())
    assert_close(f"{name} sink", ref, out)


KV_LEN_CASES = [c for c in CASES if c[0] in ("decode-split", "decode-gqa4-split", "chunk-prefill-gqa",
                                             "decode-left-pad-split", "holes-and-empty-row")]


@pytest.mark.parametrize("variant", ["softpick", "softmax"])
@pytest.mark.parametrize("case", KV_LEN_CASES, ids=[c[0] for c in KV_LEN_CASES])
def test_device_kv_len_reads_only_the_valid_prefix(case, variant):
    """kv_len from a tensor: a buffer of 2 T_k + 5 keys whose tail holds garbage (large values) gives the
    naive result over the first T_k keys, with the launch (grid, splits) sized for the whole buffer."""
    name, B, Tq, Tk, H, HQ, D, mask_kind, splits, mult = case
    q, k, v = inputs(B, Tq, Tk, H, HQ, D, mult)
    capacity = 2 * Tk + 5
    k_buf = torch.full((B, capacity, H, D), 30.0, device=DEVICE, dtype=DTYPE)
    v_buf = torch.full((B, capacity, H, D), 1e4, device=DEVICE, dtype=DTYPE)
    k_buf[:, :Tk], v_buf[:, :Tk] = k, v
    mask = make_mask(mask_kind, B, Tk)
    mask_buf = None if mask is None else torch.cat([mask, torch.ones(B, capacity - Tk, dtype=mask.dtype,
                                                                      device=DEVICE)], 1)
    kv_len = torch.tensor([Tk], dtype=torch.int32, device=DEVICE)
    out = decode_attention(q, k_buf, v_buf, variant=variant, scale=None, causal=True, attention_mask=mask_buf,
                           eps=1e-6, splits=splits + 2, kv_len=kv_len)
    ref = naive_attention(q.double(), k.double(), v.double(), variant=variant, attention_mask=mask, eps=1e-6)
    assert_close(f"{name} {variant} kv_len", ref, out)
    naive_buf = naive_attention(q.double(), k_buf.double(), v_buf.double(), variant=variant,
                                attention_mask=mask_buf, eps=1e-6, kv_len=kv_len)  # the reference itself
    torch.testing.assert_close(naive_buf, ref)


def test_launch_keys_bound_the_launch_not_the_result(monkeypatch):
    """Inside launch_keys(n) a kv_len launch covers the first n keys of the buffer only (fewer splits; the
    decode loop's length buckets): same result when kv_len <= n, and the grid is sized for n keys."""
    from softpick.ops.attention.triton import kv_cache as decode

    B, Tk, H, D = 2, 40, 2, 32
    q, k, v = inputs(B, 1, Tk, H, H, D, 1.0)
    k_buf = torch.full((B, 300, H, D), 30.0, device=DEVICE, dtype=DTYPE)
    v_buf = torch.full((B, 300, H, D), 1e4, device=DEVICE, dtype=DTYPE)
    k_buf[:, :Tk], v_buf[:, :Tk] = k, v
    kv_len = torch.tensor([Tk], dtype=torch.int32, device=DEVICE)
    seen = []
    real = decode.num_splits
    monkeypatch.setattr(decode, "num_splits", lambda q, k, block: seen.append(k.shape[1]) or real(q, k, block))
    ref = naive_attention(q.double(), k.double(), v.double(), variant="softpick", eps=1e-6)
    with decode.launch_keys(64):
        out = decode_attention(q, k_buf, v_buf, variant="softpick", scale=None, causal=True, attention_mask=None,
                               eps=1e-6, kv_len=kv_len)
    assert_close("launch_keys", ref, out)
    decode_attention(q, k_buf, v_buf, variant="softpick", scale=None, causal=True, attention_mask=None, eps=1e-6,
                     kv_len=kv_len)
    assert seen == [64, 300]
