"""Triton forward kernel of fused attention, softpick, softmax or sigmoid (compile-time switches).

One program computes a [BM, V] block of outputs for one query head of one document. It walks the key
blocks in two passes: blocks that every query row fully sees (no mask, the hot loop) and the blocks on
the causal diagonal or at the end of the document (masked). Scores are kept in log2 units
(``s2 = s * log2(e)``, folded into the scale) so every exponential is an ``exp2``.

Softpick (running max clamped at 0, so ``exp2(-m)`` <= 1 never overflows):

    m   = max(m_old, max_j s2_j, 0)
    p_j = exp2(s2_j - m) - exp2(-m)                    # = exp(-m) (e^s_j - 1)
    acc = acc * exp2(m_old - m) + sum_j |p_j|          # visible keys only
    o   = o * exp2(m_old - m) + relu(p) @ v
    end: den = acc + eps * exp2(-m);  o /= den;  lse = ln(2) * (m + log2(den)) = ln(sum_j |e^s_j - 1| + eps)

Softmax is FlashAttention-2: ``lse = ln(sum_j e^s_j)``, and a row that sees no key gives o = 0.
With a sink (``HAS_SINK``: softmax+1 is a sink of 0) the denominator also holds ``e^b`` of a per-head
logit b that has no value: the running state starts at m = b, acc = 1, and lse = ln(e^b + sum_j e^s_j).

Sigmoid (``SIGMOID``, arXiv 2409.04431) has no normaliser: ``o = sum_j sigmoid(s_j + b) v_j`` with the
bias b (passed in the ``eps`` slot), one pass, no running max; lse stores b for the backward.

Max-free first pass: the running max only guards float32's range, so each query block first runs with
m held at 0 (``p = exp2(s2) - 1`` for softpick, ``exp2(s2)`` for softmax): no row max, no rescale of
o, a quarter fewer instructions per key block. Float32 keeps the same relative precision at any
scale, so this gives the same numbers whenever no sum leaves [2^-100, 2^100]; a block where some row's
sum does (a score above ~100 in log2 units, or for softmax a row whose scores are all below ~-100)
runs again with the running max.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
LN2 = tl.constexpr(0.6931471805599453)
LOG2E = tl.constexpr(1.4426950408889634)
MAX_FREE_SUM = tl.constexpr(2.0**100)  # a max-free row sum outside [2^-100, 2^100] reruns its block
NEG_BIG = tl.constexpr(-1.0e30)  # softmax's initial running max: finite, so exp2(m_old - m) is never inf - inf
PTX = tl.constexpr(not INTERPRET)  # inline PTX (the kernels run on NVIDIA GPUs of compute capability >= 8.0)


FWD_KEEP = {  # head dim bound -> (BM, BN, num_warps, num_stages, TMA[, maxnreg]) autotuned for it
    64: [(128, 64, 4, 3, False), (128, 64, 8, 3, False), (128, 64, 8, 3, False, 128), (128, 64, 4, 3, True),
         (128, 64, 8, 3, True), (128, 64, 8, 3, True, 128), (128, 128, 8, 2, False), (128, 128, 8, 2, True)],
    128: [(128, 128, 8, 2, False), (128, 64, 8, 3, False), (128, 64, 4, 3, False), (128, 64, 4, 2, True),
          (128, 64, 4, 3, True), (128, 64, 8, 2, True, 128)],
    256: [(64, 64, 4, 2, False), (128, 32, 8, 2, False), (64, 64, 4, 2, True), (128, 64, 8, 2, True)],
}
"""Each fits the 227 KiB of shared memory of an H100 / H200 (tests/ops/test_kernel_codegen.py). A
maxnreg of 128 keeps an 8-warp tile at two blocks per SM, so one block's softpick math overlaps the
other's matmuls: without it softpick's 128x64 D=64 tile needs 153 registers (softmax's 128) and
runs one block per SM; at D=128 the 8-warp TMA tile needs 150 (128 with 5 spills) (benchmarks/RESULTS.md)."""


def fwd_tile(t: tuple) -> tuple:
    """A FWD_KEEP entry with its maxnreg (None: the compiler's choice)."""
    return t if len(t) == 6 else (*t, None)


def _config_tile(c: triton.Config) -> tuple:
    return c.kwargs["BM"], c.kwargs["BN"], c.num_warps, c.num_stages, c.kwargs["TMA"], c.maxnreg


def _fwd_configs() -> list[triton.Config]:
    """Hopper-chosen tiles (BM query rows x BN keys), each with pointer loads (cp.async) and, where
    TMA is set, tensor-descriptor loads (Hopper's TMA); the interpreter gets one small tile of each."""
    if INTERPRET:
        return [triton.Config({"BM": 32, "BN": 16, "TMA": tma}, num_warps=4, num_stages=1) for tma in (False, True)]
    tiles = dict.fromkeys(fwd_tile(t) for keep in FWD_KEEP.values() for t in keep)
    return [
        triton.Config({"BM": bm, "BN": bn, "TMA": tma}, num_warps=warps, num_stages=stages, maxnreg=maxnreg)
        for bm, bn, warps, stages, tma, maxnreg in tiles
    ]


def _prune_fwd(configs, nargs, **kwargs):
    """Keep the tiles of the head dim (shared memory grows with BN * (K + V)), and descriptor loads
    only where the launcher allows them (TMA_OK)."""
    args = {**nargs, **kwargs}
    tma_ok = bool(args["TMA_OK"])
    if INTERPRET:
        return [c for c in configs if c.kwargs["TMA"] == tma_ok]
    d = max(args["BK"], args["BV"])
    keep = {fwd_tile(t) for t in FWD_KEEP[64 if d <= 64 else 128 if d <= 128 else 256]}
    out = [c for c in configs if _config_tile(c) in keep and (tma_ok or not c.kwargs["TMA"])]
    return out or [c for c in configs if not c.kwargs["TMA"]][:1]


@triton.jit
def relu_cast(x, dtype: tl.constexpr):
    """max(x, 0) of float32 x cast to dtype: for bf16 and fp16 one ``cvt.rn.relu`` per pair of values
    on the GPU (ptxas emits F2FP.RELU), instead of a max per value and then the pack."""
    if PTX and dtype == tl.bfloat16:
        return tl.inline_asm_elementwise(
            "cvt.rn.relu.bf16x2.f32 $0, $2, $1;", "=r,r,r", [x], dtype=tl.bfloat16, is_pure=True, pack=2
        )
    elif PTX and dtype == tl.float16:
        return tl.inline_asm_elementwise(
            "cvt.rn.relu.f16x2.f32 $0, $2, $1;", "=r,r,r", [x], dtype=tl.float16, is_pure=True, pack=2
        )
    else:
        return tl.maximum(x, 0.0).to(dtype)


@triton.jit
def online_step(b_s, b_v, b_o, b_acc, b_m, visible, qk_scale, MASKED: tl.constexpr, SOFTPICK: tl.constexpr,
                FIXED_MAX: tl.constexpr, SIGMOID: tl.constexpr):
    """Fold one block into the running state: raw scores b_s [BM, BN] (hidden keys already -inf, and
    ``visible`` their mask when MASKED), values b_v [BN, BV]; (o [BM, BV], acc [BM], m [BM]) in log2 units.
    FIXED_MAX keeps m at 0 (exp2 of the raw scores): no row max, no rescale of o; the caller checks
    the sums for overflow and underflow (MAX_FREE_SUM). SIGMOID (no normaliser): m holds the bias b in
    log2 units and stays; p = sigmoid(s + b) = 1 / (1 + 2^-(s2 + b2)), hidden keys (-inf) give 0."""
    if SIGMOID:
        b_p = 1.0 / (1.0 + tl.math.exp2(-(b_s * qk_scale + b_m[:, None])))  # [BM, BN]
        if MASKED:
            b_p = tl.where(visible, b_p, 0.0)
        return tl.dot(b_p.to(b_v.dtype), b_v, b_o), b_acc, b_m
    if FIXED_MAX:
        b_m_new = b_m
        b_x = b_s * qk_scale  # [BM, BN] exp2 arguments
        b_c = 1.0  # exp2(-m)
    else:
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1) * qk_scale)
        b_r = tl.math.exp2(b_m - b_m_new)  # rescales what came before
        b_x = b_s * qk_scale - b_m_new[:, None]
        b_c = tl.math.exp2(-b_m_new)[:, None]
    if SOFTPICK:
        # [BM, BN] exp(-m) (e^s - 1); hidden keys must not add |0 - exp(-m)| to the sum
        b_p = tl.math.exp2(b_x) - b_c
        if MASKED:
            b_p = tl.where(visible, b_p, 0.0)
        b_sum = tl.sum(tl.abs(b_p), 1)
        b_pv = relu_cast(b_p, b_v.dtype)
    else:
        b_p = tl.math.exp2(b_x)
        b_sum = tl.sum(b_p, 1)
        b_pv = b_p.to(b_v.dtype)
    if FIXED_MAX:
        b_acc = b_acc + b_sum
        b_o = tl.dot(b_pv, b_v, b_o)
    else:
        b_acc = b_acc * b_r + b_sum
        b_o = tl.dot(b_pv, b_v, b_o * b_r[:, None])
    return b_o, b_acc, b_m_new


@triton.jit
def doc_bounds(cu_seqlens, i_n, T, IS_VARLEN: tl.constexpr):
    """(first row, length) of document i_n: from cu_seqlens when IS_VARLEN, else the i_n-th of T rows."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T
    return bos, (eos - bos).to(tl.int32)


@triton.jit
def query_block(cu_seqlens, T, HQ, H, BM: tl.constexpr, IS_VARLEN: tl.constexpr):
    """The program's query block on a (query blocks, documents, HQ) grid: (query head, its KV head, the
    document's first row and length, the block's first row in it); largest blocks first, since under
    causal masking they carry the most work."""
    i_m = tl.num_programs(0) - 1 - tl.program_id(0)
    i_hq = tl.program_id(2)
    bos, L = doc_bounds(cu_seqlens, tl.program_id(1), T, IS_VARLEN)
    return i_hq, i_hq // (HQ // H), bos, L, i_m * BM


@triton.jit
def doc_rows(x, bos, L, width, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Tensor descriptor of one document's rows of x [tokens, width] (row-major), from token bos, L rows,
    loaded and stored in [ROWS, COLS] blocks; rows past L read as 0 and are not written."""
    return tl.make_tensor_descriptor(x + bos * width, shape=[L, width], strides=[width, 1], block_shape=[ROWS, COLS])


@triton.jit
def _fwd_inner(
    b_o, b_acc, b_m, b_q, p_k, p_v, o_m, lo, hi, L, qk_scale,
    SK, SV, col_k, col_v, K: tl.constexpr, V: tl.constexpr,
    BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, SOFTPICK: tl.constexpr, TMA: tl.constexpr,
    FIXED_MAX: tl.constexpr, SIGMOID: tl.constexpr,
):
    """Fold the key blocks [lo, hi) into (o, acc, m); MASKED blocks hide keys >= L and, if CAUSAL, j > i.
    With TMA, p_k and p_v are the document's tensor descriptors (rows >= L read as 0) and col_k, col_v
    the head's first column; else pointers to the head's first key and value."""
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    for start_n in range(lo, hi, BN):
        o_n = start_n + tl.arange(0, BN)
        if TMA:
            b_kT = tl.trans(p_k.load([start_n, col_k]))  # [BK, BN]
            b_v = p_v.load([start_n, col_v])  # [BN, BV]
        else:
            m_k = o_k[:, None] < K
            m_v = o_v[None, :] < V
            if MASKED:
                m_k = m_k & (o_n[None, :] < L)
                m_v = m_v & (o_n[:, None] < L)
            b_kT = tl.load(p_k + o_n[None, :] * SK + o_k[:, None], mask=m_k, other=0.0)  # [BK, BN]
            b_v = tl.load(p_v + o_n[:, None] * SV + o_v[None, :], mask=m_v, other=0.0)  # [BN, BV]
        # -- raw scores q.k [BM, BN]; qk_scale (> 0, log2(e) folded in) is applied inside the exp2 --
        b_s = tl.dot(b_q, b_kT)
        if MASKED:
            m_s = o_n[None, :] < L
            if CAUSAL:
                m_s = m_s & (o_m[:, None] >= o_n[None, :])
            b_s = tl.where(m_s, b_s, float("-inf"))
            b_o, b_acc, b_m = online_step(b_s, b_v, b_o, b_acc, b_m, m_s, qk_scale, True, SOFTPICK, FIXED_MAX, SIGMOID)
        else:
            b_o, b_acc, b_m = online_step(b_s, b_v, b_o, b_acc, b_m, b_s, qk_scale, False, SOFTPICK, FIXED_MAX, SIGMOID)
    return b_o, b_acc, b_m


@triton.jit
def _fwd_keys(
    b_q, p_k, p_v, sink, o_m, start_m, L, qk_scale, i_h, i_hq, H, K: tl.constexpr, V: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    SOFTPICK: tl.constexpr, CAUSAL: tl.constexpr, HAS_SINK: tl.constexpr, TMA: tl.constexpr,
    FIXED_MAX: tl.constexpr, SIGMOID: tl.constexpr, bias2,
):
    """(o, acc, m) of the query block [start_m, start_m + BM) over all the keys it sees: the running
    state from its start (softpick m = 0, softmax's sink as the first "key") through every key block."""
    b_o = tl.zeros([BM, BV], dtype=tl.float32)
    b_acc = tl.zeros([BM], dtype=tl.float32)
    if SOFTPICK or FIXED_MAX:
        b_m = tl.zeros([BM], dtype=tl.float32)  # softpick's clamp: m never drops below 0
    else:
        b_m = tl.full([BM], NEG_BIG, dtype=tl.float32)
    if SIGMOID:
        b_m = tl.zeros([BM], dtype=tl.float32) + bias2  # sigmoid's bias b (log2 units), held fixed
    if HAS_SINK:
        # the sink is the first "key", of logit b (log2 units): sum = exp2(b - m), and m = b when it runs
        b_logit = tl.load(sink + i_hq).to(tl.float32) * LOG2E
        if FIXED_MAX:
            b_acc = b_acc + tl.math.exp2(b_logit)
        else:
            b_m = tl.zeros([BM], dtype=tl.float32) + b_logit
            b_acc = b_acc + 1.0

    if CAUSAL:
        # keys [0, start_m) are seen by every row of the block; [start_m, start_m + BM) is the diagonal
        b_o, b_acc, b_m = _fwd_inner(
            b_o, b_acc, b_m, b_q, p_k, p_v, o_m, 0, start_m, L, qk_scale,
            H * K, H * V, i_h * K, i_h * V, K, V, BN, BK, BV, False, True, SOFTPICK, TMA, FIXED_MAX, SIGMOID,
        )
        hi = tl.minimum(start_m + BM, L)
        b_o, b_acc, b_m = _fwd_inner(
            b_o, b_acc, b_m, b_q, p_k, p_v, o_m, start_m, hi, L, qk_scale,
            H * K, H * V, i_h * K, i_h * V, K, V, BN, BK, BV, True, True, SOFTPICK, TMA, FIXED_MAX, SIGMOID,
        )
    else:
        full = (L // BN) * BN
        b_o, b_acc, b_m = _fwd_inner(
            b_o, b_acc, b_m, b_q, p_k, p_v, o_m, 0, full, L, qk_scale,
            H * K, H * V, i_h * K, i_h * V, K, V, BN, BK, BV, False, False, SOFTPICK, TMA, FIXED_MAX, SIGMOID,
        )
        b_o, b_acc, b_m = _fwd_inner(
            b_o, b_acc, b_m, b_q, p_k, p_v, o_m, full, L, L, qk_scale,
            H * K, H * V, i_h * K, i_h * V, K, V, BN, BK, BV, True, False, SOFTPICK, TMA, FIXED_MAX, SIGMOID,
        )
    return b_o, b_acc, b_m


@triton.autotune(
    configs=_fwd_configs(),
    key=["BK", "BV", "CAUSAL", "SOFTPICK", "SIGMOID", "TMA_OK", "TUNE_LEN"],
    prune_configs_by={"early_config_prune": _prune_fwd},
)
@triton.jit
def attention_fwd_kernel(
    q, k, v, o, lse, sink, cu_seqlens, T, TUNE_LEN, qk_scale, eps,
    HQ, H, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    SOFTPICK: tl.constexpr, CAUSAL: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_SINK: tl.constexpr,
    SIGMOID: tl.constexpr, TMA_OK: tl.constexpr, TMA: tl.constexpr,
):
    """Grid (cdiv(max_len, BM), documents, HQ); TUNE_LEN only keys the autotuner. q [*, HQ, K], k [*, H, K], v [*, H, V], o [*, HQ, V], lse [*, HQ];
    sink [HQ] float32 (softmax with HAS_SINK): a per-head logit in every row's denominator, with no value.
    eps: softpick's eps, or with SIGMOID the bias b (natural units).
    TMA (a tile choice, allowed by the launcher's TMA_OK: K == BK, V == BV, 16-byte aligned tensors)
    moves q, k, v and o through tensor descriptors of the document, so its edges need no masks."""
    tl.static_assert(BM % BN == 0, "BM must be a multiple of BN so the diagonal starts on a key block")
    tl.static_assert(TMA_OK or not TMA, "descriptor loads need K == BK, V == BV and aligned tensors")
    i_hq, i_h, bos, L, start_m = query_block(cu_seqlens, T, HQ, H, BM, IS_VARLEN)
    if start_m >= L:
        return

    o_m = start_m + tl.arange(0, BM)
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    m_m = o_m < L
    # load q: it stays in registers/shared memory for the whole key loop. [BM, BK]
    if TMA:
        b_q = doc_rows(q, bos, L, HQ * K, BM, BK).load([start_m, i_hq * K])
        p_k = doc_rows(k, bos, L, H * K, BN, BK)
        p_v = doc_rows(v, bos, L, H * V, BN, BV)
    else:
        p_q = q + (bos + o_m[:, None]) * (HQ * K) + i_hq * K + o_k[None, :]
        b_q = tl.load(p_q, mask=m_m[:, None] & (o_k[None, :] < K), other=0.0)
        p_k = k + bos * (H * K) + i_h * K
        p_v = v + bos * (H * V) + i_h * V

    # First every key block with the running max held at 0 (no row max, no rescale of o); a row whose
    # sum left [2^-100, 2^100] (a score above ~100 in log2 units, or for softmax all below ~-100) may
    # have overflowed or flushed to 0, and then the block runs again with the running max.
    b_o, b_acc, b_m = _fwd_keys(
        b_q, p_k, p_v, sink, o_m, start_m, L, qk_scale, i_h, i_hq, H, K, V, BM, BN, BK, BV,
        SOFTPICK, CAUSAL, HAS_SINK, TMA, True, SIGMOID, eps * LOG2E,
    )
    if not SIGMOID:  # sigmoid keeps no sum (each weight is at most 1): nothing to overflow
        b_ok = b_acc <= MAX_FREE_SUM  # NaN compares false
        if not SOFTPICK:
            b_ok = b_ok & (b_acc >= 1.0 / MAX_FREE_SUM)
        if tl.max(tl.where(m_m & ~b_ok, 1, 0), 0) > 0:
            b_o, b_acc, b_m = _fwd_keys(
                b_q, p_k, p_v, sink, o_m, start_m, L, qk_scale, i_h, i_hq, H, K, V, BM, BN, BK, BV,
                SOFTPICK, CAUSAL, HAS_SINK, TMA, False, SIGMOID, eps * LOG2E,
            )

    # -- epilogue --
    if SOFTPICK:
        b_den = b_acc + eps * tl.math.exp2(-b_m)
    elif SIGMOID:
        b_den = tl.full([BM], 1.0, dtype=tl.float32)  # unnormalised; lse below is then the bias b
    else:
        b_den = tl.where(b_acc > 0, b_acc, 1.0)  # a row that sees no key keeps o = 0
    b_lse = (b_m + tl.math.log2(b_den)) * LN2
    b_o = b_o / b_den[:, None]
    if TMA:
        doc_rows(o, bos, L, HQ * V, BM, BV).store([start_m, i_hq * V], b_o.to(o.dtype.element_ty))
    else:
        p_o = o + (bos + o_m[:, None]) * (HQ * V) + i_hq * V + o_v[None, :]
        tl.store(p_o, b_o.to(o.dtype.element_ty), mask=m_m[:, None] & (o_v[None, :] < V))
    tl.store(lse + (bos + o_m) * HQ + i_hq, b_lse, mask=m_m)
