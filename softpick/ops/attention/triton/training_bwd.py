"""Triton backward kernels of fused attention, softpick, softmax or sigmoid, from o, lse and delta alone.

FlashAttention-2 split: ``attention_bwd_dkdv_kernel`` owns a key block and walks the query blocks of
every query head in its GQA group (so dk, dv are written once, no reduction); ``attention_bwd_dq_kernel``
owns a query block and walks the key blocks. Both recompute the scores in log2 units.

With ``lse = ln(sum_j |e^s_j - 1| + eps)`` (softpick) or ``ln(sum_j e^s_j)`` (softmax),
``delta_i = sum_v o_iv do_iv`` and ``dP = do @ v^T``:

    softpick: e = exp(s - lse);  P = relu(e - exp(-lse));  dS = e * ([s > 0] dP - sign(s) delta)
    softmax:  P = exp(s - lse);                            dS = P * (dP - delta)

    sigmoid:  P = sigmoid(s + b), b stored as lse;        dS = P (1 - P) dP   (no delta)

then dv = P^T do, dk = scale * dS^T q, dq = scale * dS k. Masked keys get s = -inf, hence e = P = dS = 0.
The preprocess kernel stores c = exp(-lse) beside lse for the dk/dv kernel (which would otherwise take
it for each query in every step). The kernels read the sign of s from e against c (s > 0 exactly
where e > c), so the scores are dead after the exp (fewer live registers: 4.5% faster at D = 128 on an H200).
Both kernels take sign(0) as -1 (``e * delta`` wherever e <= c: one compare and one select per score
instead of two of each), a subgradient of |e^s - 1| that differs from sign(0) = 0 only at s exactly 0
(benchmarks/RESULTS.md has the timings of both forms).

Precision: delta comes from the stored 16-bit o, as in every FlashAttention-style backward, and
softpick's e = e^s / den scales it by 1/den, so in a row whose denominator is tiny (one visible key
with |s| below ~1e-3) o's bf16 rounding becomes a gradient error of order 1
(``benchmarks/grad_precision.py``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from softpick.ops.attention.triton.training_fwd import INTERPRET, doc_bounds, query_block, relu_cast

LOG2E = tl.constexpr(1.4426950408889634)


def bwd_tile(t: tuple) -> tuple:
    """A DKDV_KEEP / DQ_KEEP entry with its maxnreg (None: the compiler's choice)."""
    return t if len(t) == 5 else (*t, None)


def _bwd_configs(small: dict, keep_by_dim: dict[int, list[tuple]]) -> list[triton.Config]:
    if INTERPRET:
        return [triton.Config(small, num_warps=4, num_stages=1)]
    tiles = dict.fromkeys(bwd_tile(t) for keep in keep_by_dim.values() for t in keep)
    return [triton.Config({"BM": bm, "BN": bn}, num_warps=w, num_stages=s, maxnreg=r) for bm, bn, w, s, r in tiles]


def _prune(keep_by_dim: dict[int, list[tuple]]):
    def prune(configs, nargs, **kwargs):
        if INTERPRET:
            return configs
        args = {**nargs, **kwargs}
        d = max(args["BK"], args["BV"])
        keep = {bwd_tile(t) for t in keep_by_dim[64 if d <= 64 else 128 if d <= 128 else 256]}
        out = [c for c in configs if (c.kwargs["BM"], c.kwargs["BN"], c.num_warps, c.num_stages, c.maxnreg) in keep]
        return out or configs[:1]

    return prune


# Head dim bound -> the (BM, BN, num_warps, num_stages[, maxnreg]) autotuned for it; each fits an
# H100's shared memory (tests/ops/test_kernel_codegen.py). The D=256 tiles have 8 warps, so the fp32
# accumulators fit the registers: in the sm_90 SASS the 4-warp 32x64 dk/dv tile spilled 711
# registers, 32x64x8x2 spills 31 (benchmarks/RESULTS.md; chosen by spills, not yet timed against each
# other). A maxnreg of 168 (dk/dv, 4 warps) or 128 (dq, 8 warps) fits one more block per SM, as
# softmax's tiles have without it (softpick's 32x64 dk/dv tile: 180 registers, 167 for softmax's),
# with no spills in dk/dv and 2 in dq.
# dkdv: BN keys per program (the resident block, with its fp32 dk and dv), BM queries per step.
DKDV_KEEP = {
    64: [(64, 128, 8, 2), (32, 128, 4, 3), (64, 64, 8, 2), (64, 64, 4, 3), (32, 64, 4, 3), (32, 64, 4, 3, 168)],
    128: [(32, 128, 8, 2), (64, 64, 8, 2), (64, 64, 4, 2), (32, 64, 4, 3)],  # 64x64x8x2: no spills at D 128
    256: [(32, 64, 8, 2), (64, 64, 8, 2)],
}
# dq: BM queries per program (the resident block), BN keys per step.
DQ_KEEP = {
    64: [(128, 64, 8, 2), (128, 64, 8, 2, 128), (64, 64, 4, 3), (128, 32, 4, 3)],
    # 128x64x8x3: 0.74 vs 0.85 ms (64x64x4x2) on the H100 at 2x8192x8x128; 64x32x4x2: 3 blocks per SM
    128: [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 3), (64, 32, 4, 2)],
    256: [(128, 32, 8, 2), (64, 64, 8, 2), (64, 32, 8, 2)],
}
_prune_dkdv = _prune(DKDV_KEEP)
_prune_dq = _prune(DQ_KEEP)


@triton.jit
def attention_bwd_preprocess_kernel(
    o, do, lse, delta, lse_c, N, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, SOFTPICK: tl.constexpr
):
    """Per row of the N = tokens * heads rows of o [N, V]: delta = sum_v o * do in float32 and, for
    softpick, lse_c [N, 2] = (lse * log2(e), exp(-lse)), which the dk/dv kernel reads in one load
    instead of taking an exp2 per query in every step (a third of its exp2s at 8 columns a thread)."""
    o_t = tl.program_id(0) * BT + tl.arange(0, BT)
    o_v = tl.arange(0, BV)
    m = (o_t[:, None] < N) & (o_v[None, :] < V)
    b_o = tl.load(o + o_t[:, None].to(tl.int64) * V + o_v[None, :], mask=m, other=0.0).to(tl.float32)
    b_do = tl.load(do + o_t[:, None].to(tl.int64) * V + o_v[None, :], mask=m, other=0.0).to(tl.float32)
    tl.store(delta + o_t, tl.sum(b_o * b_do, 1), mask=o_t < N)
    if SOFTPICK:
        b_lse = tl.load(lse + o_t, mask=o_t < N, other=0.0) * LOG2E
        tl.store(lse_c + 2 * o_t, b_lse, mask=o_t < N)
        tl.store(lse_c + 2 * o_t + 1, tl.math.exp2(-b_lse), mask=o_t < N)


@triton.jit
def probs_T(b_sT, b_lse, b_c, dtype: tl.constexpr, SOFTPICK: tl.constexpr, SIGMOID: tl.constexpr):
    """(e [BN, BM], P [BN, BM] in dtype) of transposed scores b_sT in log2 units (hidden ones -inf),
    lse [BM] (log2 units) and, for softpick, c = exp2(-lse) [BM]: e = exp2(s - lse); softpick:
    P = relu(e - c); softmax: P = e; sigmoid (lse = its bias b): e = P = sigmoid(s + b). The scores are
    not needed after this: s > 0 exactly where e > c."""
    if SIGMOID:
        b_pT = 1.0 / (1.0 + tl.math.exp2(-(b_sT + b_lse[None, :])))
        return b_pT, b_pT.to(dtype)
    b_eT = tl.math.exp2(b_sT - b_lse[None, :])
    if SOFTPICK:
        return b_eT, relu_cast(b_eT - b_c[None, :], dtype)
    return b_eT, b_eT.to(dtype)


@triton.jit
def grad_scores_T(b_eT, b_c, b_dpT, b_delta, SOFTPICK: tl.constexpr, SIGMOID: tl.constexpr):
    """dS [BN, BM] from (e, c) of :func:`probs_T`, dP = v do^T [BN, BM] and delta [BM]."""
    if SIGMOID:
        return b_eT * (1.0 - b_eT) * b_dpT
    if SOFTPICK:
        return b_eT * tl.where(b_eT > b_c[None, :], b_dpT - b_delta[None, :], b_delta[None, :])
    return b_eT * (b_dpT - b_delta[None, :])


@triton.jit
def _dkdv_inner(
    b_dk, b_dv, b_k, b_v, p_q, p_do, p_lse, p_delta, o_n, lo, hi, L, qk_scale,
    SQ, SO, SL, SD, K: tl.constexpr, V: tl.constexpr,
    BM: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, SOFTPICK: tl.constexpr, SIGMOID: tl.constexpr,
):
    """Add the query blocks [lo, hi) to dk, dv [BN, *]; MASKED steps hide rows >= L and, if CAUSAL, j > i.
    p_lse points at lse (natural log, softmax) or at lse_c (softpick: pairs (lse in log2 units,
    exp(-lse)) of :func:`attention_bwd_preprocess_kernel`), SL apart."""
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    for start_m in range(lo, hi, BM):
        o_m = start_m + tl.arange(0, BM)
        m_q = o_k[None, :] < K
        m_o = o_v[None, :] < V
        m_r = o_m < L
        if MASKED:
            m_q = m_q & m_r[:, None]
            m_o = m_o & m_r[:, None]
        b_q = tl.load(p_q + o_m[:, None] * SQ + o_k[None, :], mask=m_q, other=0.0)  # [BM, BK]
        b_do = tl.load(p_do + o_m[:, None] * SO + o_v[None, :], mask=m_o, other=0.0)  # [BM, BV]
        if SOFTPICK:  # [BM, 2] -> lse (log2 units), c [BM]; rows past L read 0 (their q and do are 0)
            p_pair = p_lse + o_m[:, None] * SL + tl.arange(0, 2)[None, :]
            if MASKED:
                b_lse, b_c = tl.split(tl.load(p_pair, mask=m_r[:, None], other=0.0))
            else:
                b_lse, b_c = tl.split(tl.load(p_pair))
        else:
            if MASKED:
                b_lse = tl.load(p_lse + o_m * SL, mask=m_r, other=0.0) * LOG2E  # [BM]
            else:
                b_lse = tl.load(p_lse + o_m * SL) * LOG2E
            b_c = b_lse  # unused
        if MASKED:
            b_delta = tl.load(p_delta + o_m * SD, mask=m_r, other=0.0)
        else:
            b_delta = tl.load(p_delta + o_m * SD)
        # [BN, BM] scores, transposed, in log2 units
        b_sT = tl.dot(b_k, tl.trans(b_q)) * qk_scale
        if MASKED:
            if CAUSAL:
                b_sT = tl.where(o_m[None, :] >= o_n[:, None], b_sT, float("-inf"))
        b_eT, b_pT = probs_T(b_sT, b_lse, b_c, b_do.dtype, SOFTPICK, SIGMOID)
        b_dv = tl.dot(b_pT, b_do, b_dv)
        b_dsT = grad_scores_T(b_eT, b_c, tl.dot(b_v, tl.trans(b_do)), b_delta, SOFTPICK, SIGMOID)
        b_dk = tl.dot(b_dsT.to(b_q.dtype), b_q, b_dk)
    return b_dk, b_dv


@triton.autotune(
    configs=_bwd_configs({"BM": 16, "BN": 32}, DKDV_KEEP),
    key=["BK", "BV", "CAUSAL", "SOFTPICK", "SIGMOID", "TUNE_LEN"],
    prune_configs_by={"early_config_prune": _prune_dkdv},
)
@triton.jit
def attention_bwd_dkdv_kernel(
    q, k, v, do, lse, delta, dk, dv, cu_seqlens, T, TUNE_LEN, qk_scale, scale,
    HQ, H, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    SOFTPICK: tl.constexpr, CAUSAL: tl.constexpr, IS_VARLEN: tl.constexpr, SIGMOID: tl.constexpr,
):
    """Grid (cdiv(max_len, BN), documents, H); G = HQ // H; TUNE_LEN only keys the autotuner. dk [*, H, K],
    dv [*, H, V] in k's dtype. lse: [*, HQ] float32 (softmax), or lse_c [*, HQ, 2] of the preprocess
    kernel (softpick)."""
    tl.static_assert(BN % BM == 0, "BN must be a multiple of BM so the diagonal starts on a query block")
    i_blk = tl.num_programs(0) - 1 - tl.program_id(0)
    i_n = tl.program_id(1)
    i_h = tl.program_id(2)
    bos, L = doc_bounds(cu_seqlens, i_n, T, IS_VARLEN)
    start_n = i_blk * BN
    if start_n >= L:
        return

    o_n = start_n + tl.arange(0, BN)
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    m_n = o_n < L
    m_k = m_n[:, None] & (o_k[None, :] < K)
    m_v = m_n[:, None] & (o_v[None, :] < V)
    # k and v stay resident; keys past L load as 0 and their rows are never stored. [BN, BK], [BN, BV]
    b_k = tl.load(k + (bos + o_n[:, None]) * (H * K) + i_h * K + o_k[None, :], mask=m_k, other=0.0)
    b_v = tl.load(v + (bos + o_n[:, None]) * (H * V) + i_h * V + o_v[None, :], mask=m_v, other=0.0)
    b_dk = tl.zeros([BN, BK], dtype=tl.float32)
    b_dv = tl.zeros([BN, BV], dtype=tl.float32)

    # unrolled over the G query heads of the group: a runtime outer loop around the pipelined
    # query loops made the compiler spill registers
    for i_g in tl.static_range(G):
        i_hq = i_h * G + i_g
        p_q = q + bos * (HQ * K) + i_hq * K
        p_do = do + bos * (HQ * V) + i_hq * V
        p_lse = lse + (bos * HQ + i_hq) * (2 if SOFTPICK else 1)
        p_delta = delta + bos * HQ + i_hq
        if CAUSAL:
            lo = start_n + BN  # query rows [start_n, start_n + BN) straddle the diagonal
            b_dk, b_dv = _dkdv_inner(
                b_dk, b_dv, b_k, b_v, p_q, p_do, p_lse, p_delta, o_n, start_n, tl.minimum(lo, L), L,
                qk_scale, HQ * K, HQ * V, HQ * (2 if SOFTPICK else 1), HQ, K, V, BM, BK, BV, True, True, SOFTPICK,
                SIGMOID,
            )
        else:
            lo = 0
        full = tl.maximum(lo, lo + ((L - lo) // BM) * BM)
        b_dk, b_dv = _dkdv_inner(
            b_dk, b_dv, b_k, b_v, p_q, p_do, p_lse, p_delta, o_n, lo, full, L,
            qk_scale, HQ * K, HQ * V, HQ * (2 if SOFTPICK else 1), HQ, K, V, BM, BK, BV, False, CAUSAL, SOFTPICK,
            SIGMOID,
        )
        b_dk, b_dv = _dkdv_inner(
            b_dk, b_dv, b_k, b_v, p_q, p_do, p_lse, p_delta, o_n, full, L, L,
            qk_scale, HQ * K, HQ * V, HQ * (2 if SOFTPICK else 1), HQ, K, V, BM, BK, BV, True, False, SOFTPICK,
            SIGMOID,
        )

    b_dk = b_dk * scale
    tl.store(dk + (bos + o_n[:, None]) * (H * K) + i_h * K + o_k[None, :], b_dk.to(dk.dtype.element_ty), mask=m_k)
    tl.store(dv + (bos + o_n[:, None]) * (H * V) + i_h * V + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_v)


@triton.jit
def _dq_inner(
    b_dq, b_q, b_do, b_lse, b_c, b_delta, p_k, p_v, o_m, lo, hi, L, qk_scale,
    SK, SV, K: tl.constexpr, V: tl.constexpr,
    BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, SOFTPICK: tl.constexpr, SIGMOID: tl.constexpr,
):
    """Add the key blocks [lo, hi) to dq [BM, BK]; MASKED steps hide keys >= L and, if CAUSAL, j > i.
    lse [BM] in log2 units and (softpick) c = exp2(-lse)."""
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    for start_n in range(lo, hi, BN):
        o_n = start_n + tl.arange(0, BN)
        m_k = o_k[:, None] < K
        m_v = o_v[:, None] < V
        if MASKED:
            m_k = m_k & (o_n[None, :] < L)
            m_v = m_v & (o_n[None, :] < L)
        b_kT = tl.load(p_k + o_n[None, :] * SK + o_k[:, None], mask=m_k, other=0.0)  # [BK, BN]
        b_vT = tl.load(p_v + o_n[None, :] * SV + o_v[:, None], mask=m_v, other=0.0)  # [BV, BN]
        b_s = tl.dot(b_q, b_kT) * qk_scale  # [BM, BN]
        if MASKED:
            m_s = o_n[None, :] < L
            if CAUSAL:
                m_s = m_s & (o_m[:, None] >= o_n[None, :])
            b_s = tl.where(m_s, b_s, float("-inf"))
        b_dp = tl.dot(b_do, b_vT)  # [BM, BN]
        if SIGMOID:  # lse holds the bias b: P = sigmoid(s + b), dS = P (1 - P) dP
            b_p = 1.0 / (1.0 + tl.math.exp2(-(b_s + b_lse[:, None])))
            b_ds = b_p * (1.0 - b_p) * b_dp
        elif SOFTPICK:  # s > 0 exactly where e > c = exp2(-lse)
            b_e = tl.math.exp2(b_s - b_lse[:, None])
            b_ds = b_e * tl.where(b_e > b_c[:, None], b_dp - b_delta[:, None], b_delta[:, None])
        else:
            b_e = tl.math.exp2(b_s - b_lse[:, None])
            b_ds = b_e * (b_dp - b_delta[:, None])
        b_dq = tl.dot(b_ds.to(b_kT.dtype), tl.trans(b_kT), b_dq)
    return b_dq


@triton.autotune(
    configs=_bwd_configs({"BM": 32, "BN": 16}, DQ_KEEP),
    key=["BK", "BV", "CAUSAL", "SOFTPICK", "SIGMOID", "TUNE_LEN"],
    prune_configs_by={"early_config_prune": _prune_dq},
)
@triton.jit
def attention_bwd_dq_kernel(
    q, k, v, do, lse, delta, dq, cu_seqlens, T, TUNE_LEN, qk_scale, scale,
    HQ, H, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    SOFTPICK: tl.constexpr, CAUSAL: tl.constexpr, IS_VARLEN: tl.constexpr, SIGMOID: tl.constexpr,
):
    """Grid (cdiv(max_len, BM), documents, HQ); TUNE_LEN only keys the autotuner. dq [*, HQ, K] in q's dtype."""
    tl.static_assert(BM % BN == 0, "BM must be a multiple of BN so the diagonal starts on a key block")
    i_hq, i_h, bos, L, start_m = query_block(cu_seqlens, T, HQ, H, BM, IS_VARLEN)
    if start_m >= L:
        return

    o_m = start_m + tl.arange(0, BM)
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    m_m = o_m < L
    m_q = m_m[:, None] & (o_k[None, :] < K)
    o_q = (bos + o_m[:, None]) * (HQ * K) + i_hq * K + o_k[None, :]
    b_q = tl.load(q + o_q, mask=m_q, other=0.0)  # [BM, BK]
    b_do = tl.load(
        do + (bos + o_m[:, None]) * (HQ * V) + i_hq * V + o_v[None, :],
        mask=m_m[:, None] & (o_v[None, :] < V), other=0.0,
    )  # [BM, BV]
    b_lse = tl.load(lse + (bos + o_m) * HQ + i_hq, mask=m_m, other=0.0) * LOG2E
    b_delta = tl.load(delta + (bos + o_m) * HQ + i_hq, mask=m_m, other=0.0)
    b_c = tl.math.exp2(-b_lse)
    p_k = k + bos * (H * K) + i_h * K
    p_v = v + bos * (H * V) + i_h * V
    b_dq = tl.zeros([BM, BK], dtype=tl.float32)
    if CAUSAL:
        b_dq = _dq_inner(
            b_dq, b_q, b_do, b_lse, b_c, b_delta, p_k, p_v, o_m, 0, start_m, L, qk_scale,
            H * K, H * V, K, V, BN, BK, BV, False, True, SOFTPICK, SIGMOID,
        )
        b_dq = _dq_inner(
            b_dq, b_q, b_do, b_lse, b_c, b_delta, p_k, p_v, o_m, start_m, tl.minimum(start_m + BM, L), L,
            qk_scale, H * K, H * V, K, V, BN, BK, BV, True, True, SOFTPICK, SIGMOID,
        )
    else:
        full = (L // BN) * BN
        b_dq = _dq_inner(
            b_dq, b_q, b_do, b_lse, b_c, b_delta, p_k, p_v, o_m, 0, full, L, qk_scale,
            H * K, H * V, K, V, BN, BK, BV, False, False, SOFTPICK, SIGMOID,
        )
        b_dq = _dq_inner(
            b_dq, b_q, b_do, b_lse, b_c, b_delta, p_k, p_v, o_m, full, L, L, qk_scale,
            H * K, H * V, K, V, BN, BK, BV, True, False, SOFTPICK, SIGMOID,
        )
    b_dq = b_dq * scale
    tl.store(dq + o_q, b_dq.to(dq.dtype.element_ty), mask=m_q)
