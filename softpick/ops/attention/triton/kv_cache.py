"""KV-cache attention with the Triton decode kernels: queries shorter than keys, padding, split-K.

The inference path of the fused kernels (forward only, no autograd): decoding (T_q = 1), chunked
prefill (T_q < T_k), and padded batches (``attention_mask``) of any length. Keys and values may be
strided views, e.g. ``cache.layers[i].keys.transpose(1, 2)`` of a transformers cache, and are read in
place. The keys are split across programs (flash-decoding) so a long cache fills the GPU even at
batch 1; the splits are merged exactly (see :mod:`.triton_decode`).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import torch

from softpick.ops.attention.triton.training import (
    LOG2E,
    device_support,
    head_dim_support,
    kernel_scale,
    on_device_of,
    pow2_block,
)

MIN_KEYS_PER_SPLIT = 256
"""Splits never get fewer keys than this (the merge would cost more than it saves)."""

_LAUNCH_KEYS: list[int | None] = [None]


@contextlib.contextmanager
def launch_keys(n: int | None) -> Iterator[None]:
    """Inside, launches with a device ``kv_len`` cover only the first ``n`` keys of their buffers.

    A preallocated cache is passed whole (its shape is the same at every step, so a compiled step is
    traced once), but while it is short its tail need not be split and scanned: the decode loop sets
    ``n`` to a length bucket >= kv_len and captures one CUDA graph per bucket. The launcher reads ``n``
    when it runs (the custom op is opaque to torch.compile), so one compiled graph serves every bucket.
    """
    before = _LAUNCH_KEYS[0]
    _LAUNCH_KEYS[0] = n
    try:
        yield
    finally:
        _LAUNCH_KEYS[0] = before


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def supports(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, cu_seqlens: torch.Tensor | None,
    sink: torch.Tensor | None = None,
) -> str | None:
    """None when the decode kernels can run these inputs, else the reason they cannot (one phrase)."""
    if cu_seqlens is not None:
        return "packed documents (cu_seqlens) go to the training kernels, which need T_q == T_k and no padding mask"
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, sink)):
        return "the KV-cache kernels have no backward (run them under torch.no_grad())"
    return head_dim_support(q, v) or device_support(q)


def num_splits(q: torch.Tensor, k: torch.Tensor, block_rows: int) -> int:
    """Key splits so that at most two programs run per multiprocessor, each with >= MIN_KEYS_PER_SPLIT keys.

    Rounded down: on an H100 (132 SMs), batch 1 x 16 heads at 32k – 131k keys ran about 3% faster
    with 16 splits (256 programs) than with 17 (272, a sliver of a third wave); batch 2 up to 5% with
    8 than with 9 (benchmarks/RESULTS.md).
    """
    B, Tq, HQ, _ = q.shape
    Tk, H = k.shape[1], k.shape[2]
    programs = B * H * math.ceil(Tq * (HQ // H) / block_rows)
    sms = _multiprocessors(q.device.index or 0) if q.is_cuda else 4
    return max(1, min(2 * sms // programs, math.ceil(Tk / MIN_KEYS_PER_SPLIT)))


def _decode(q, k, v, attention_mask, softpick: bool, scale: float, causal: bool, eps: float, splits: int, sink=None,
            kv_len=None):
    from softpick.ops.attention.triton.kv_cache_kernels import attention_combine_kernel, attention_decode_kernel

    B, Tq, HQ, K = q.shape
    Tk, H, V = k.shape[1], k.shape[2], v.shape[3]
    if kv_len is not None and _LAUNCH_KEYS[0] is not None:
        Tk = min(Tk, _LAUNCH_KEYS[0])  # the keys past the bucket are past kv_len: not launched over
    G = HQ // H
    interpret = not q.is_cuda
    BM = min(pow2_block(Tq * G), 16 if interpret else 64)
    BN = 16 if interpret else 64
    BK, BV = pow2_block(K), pow2_block(V)
    if splits <= 0:
        splits = num_splits(q, k[:, :Tk], BM)
    keys_per_split = math.ceil(math.ceil(Tk / splits) / BN) * BN
    splits = math.ceil(Tk / keys_per_split)
    o_part = torch.empty(splits, B, Tq, HQ, V, dtype=torch.float32, device=q.device)
    m_part = torch.empty(splits, B, Tq, HQ, dtype=torch.float32, device=q.device)
    l_part = torch.empty_like(m_part)
    mask = attention_mask if attention_mask is not None else q  # any pointer when HAS_MASK is off
    attention_decode_kernel[(splits, math.ceil(Tq * G / BM), B * H)](
        q, k, v, mask, q if kv_len is None else kv_len, o_part, m_part, l_part,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), mask.stride(0),
        B, Tq, Tk, H, keys_per_split, scale * LOG2E,
        G=G, K=K, V=V, BK=BK, BV=BV, BM=BM, BN=BN,
        SOFTPICK=softpick, CAUSAL=causal, HAS_MASK=attention_mask is not None, HAS_KV_LEN=kv_len is not None,
        num_warps=4, num_stages=1 if interpret else 3,
    )
    o = torch.empty(B, Tq, HQ, V, dtype=q.dtype, device=q.device)
    n_rows, BR = B * Tq * HQ, 16
    attention_combine_kernel[(math.ceil(n_rows / BR),)](
        o_part, m_part, l_part, o, sink, n_rows, splits, HQ, eps, V=V, BR=BR, BV=BV, SOFTPICK=softpick,
        HAS_SINK=sink is not None, num_warps=4,
    )
    return o


@torch.library.custom_op("softpick::attention_decode", mutates_args=())
def attention_decode_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_mask: torch.Tensor | None,
    softpick: bool,
    scale: float,
    causal: bool,
    eps: float,
    splits: int,
    sink: torch.Tensor | None,
    kv_len: torch.Tensor | None = None,
) -> torch.Tensor:
    """o [B, T_q, HQ, V] of q [B, T_q, HQ, K] over k, v [B, T_k, H, *] (last dim contiguous)."""
    with on_device_of(q):
        return _decode(q, k, v, attention_mask, softpick, scale, causal, eps, splits, sink, kv_len)


@attention_decode_op.register_fake
def _(q, k, v, attention_mask, softpick, scale, causal, eps, splits, sink, kv_len=None):
    return q.new_empty(*q.shape[:3], v.shape[-1])


def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    variant: str,
    scale: float | None,
    causal: bool,
    attention_mask: torch.Tensor | None,
    eps: float,
    splits: int = 0,
    sink: torch.Tensor | None = None,
    kv_len: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused attention of the last T_q positions over T_k keys; no gradient.

    Args:
        q: [B, T_q, HQ, K]; k: [B, T_k, H, K]; v: [B, T_k, H, V] (bf16/fp16 on CUDA; strided views are
            read in place as long as the head dim is contiguous), HQ a multiple of H, T_q <= T_k.
        variant: "softpick" or "softmax".
        scale: score scale, default K ** -0.5.
        causal: query i sees keys j <= i + T_k - T_q.
        attention_mask: [B, T_k], nonzero for real tokens, zero for padding keys, or None.
        eps: softpick's constant added to the unscaled denominator (unused by softmax).
        splits: number of key splits; 0 picks one from the GPU's size (see :func:`num_splits`).
        sink: [HQ] per-head sink logits (softmax only), or None.
        kv_len: a 1-element int tensor on q's device, the number of valid keys (<= T_k), or None (all
            T_k). Read by the kernel, never by the host: keys from kv_len on are ignored, the queries are
            positions kv_len - T_q .. kv_len - 1, and the launch (grid, splits) depends on T_k only, so
            one launch serves every decoding step of a CUDA graph (slice k, v to a length bucket to
            size the splits).

    Returns:
        o [B, T_q, HQ, V] in q.dtype; a query that sees no key gets 0.
    """
    scale = kernel_scale(variant, scale, q.shape[-1])
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    if attention_mask is not None and attention_mask.stride(-1) != 1:
        attention_mask = attention_mask.contiguous()
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        attention_mask = attention_mask.to(torch.uint8)
    # the custom op is what torch.compile traces; eager decoding calls the launcher directly (the op's
    # dispatch costs about 10 us of host time per layer and step, and decoding is host-bound)
    if kv_len is not None:
        kv_len = kv_len.reshape(1).to(torch.int32)  # a no-op for the int32 [1] tensors of StaticKVCache
    run = attention_decode_op if torch.compiler.is_compiling() else _decode
    return run(q, k, v, attention_mask, variant == "softpick", scale, bool(causal), float(eps), int(splits),
               None if sink is None else sink.float().contiguous(), kv_len)
