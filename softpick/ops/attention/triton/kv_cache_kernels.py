"""Triton kernels of KV-cache attention (decode and chunked prefill), softpick, softmax or sigmoid, forward only.

Flash-decoding: the keys are cut into ``S`` splits; one program of :func:`attention_decode_kernel`
folds one split of one (batch row, KV head) for a block of BM query rows, where a row is a pair
(query position t, query head g of the KV head's group): the G heads that share a KV head are handled
together, so each key and value block is read once per group. Keys are read through strides, so the
[B, H, T, D] buffers of a transformers cache are used in place.

Each split leaves unnormalised partials in log2 units (see :mod:`.triton_fwd` for the recurrence):
``o_s = sum_j p_j v_j``, ``l_s = sum_j |p_j|`` (softmax: ``sum_j p_j``) and its running max ``m_s``.
:func:`attention_combine_kernel` merges them exactly like log-sum-exp terms, since the softpick
denominator is a plain sum too:

    M = max_s m_s;  den = sum_s l_s 2^(m_s - M);  o = sum_s o_s 2^(m_s - M) / (den + eps 2^(-M))

(softmax: no eps; sigmoid: every m_s is its bias b and den = 1, so o = sum_s o_s; a row that sees no key gets 0; a sink logit b adds 2^(b log2(e) - M) to den once). Visible keys: j < T_k, ``mask[b, j] != 0`` when a
padding mask is given, and with ``CAUSAL`` j <= t + T_k - T_q (queries are the last T_q positions).
"""

from __future__ import annotations

import triton
import triton.language as tl

from softpick.ops.attention.triton.training_fwd import online_step

NEG_BIG = tl.constexpr(-1.0e30)  # softmax's initial running max (finite: no inf - inf)
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def attention_decode_kernel(
    q, k, v, mask, kv_len, o_part, m_part, l_part,
    s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_mb,
    B, Tq, Tk, H, keys_per_split, qk_scale, bias2,
    G: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    SOFTPICK: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_KV_LEN: tl.constexpr,
    SIGMOID: tl.constexpr,
):
    """Grid (S, cdiv(Tq * G, BM), B * H). Partials: o_part [S, B, Tq, H*G, V] fp32, m/l_part [S, B, Tq, H*G].

    With HAS_KV_LEN the number of valid keys is read from the device scalar ``kv_len`` (<= the Tk the
    grid was sized for): the launch is the same for every decoding step, so it can sit in a CUDA graph;
    splits past kv_len fold no key and leave neutral partials. bias2: sigmoid's bias b in log2 units
    (SIGMOID), unused otherwise."""
    if HAS_KV_LEN:
        Tk = tl.load(kv_len).to(tl.int32)
    i_s = tl.program_id(0)
    i_r = tl.program_id(1)
    i_bh = tl.program_id(2)
    i_b = i_bh // H
    i_h = i_bh % H
    HQ = H * G

    rows = i_r * BM + tl.arange(0, BM)
    m_rows = rows < Tq * G
    t = rows // G  # query position of each row
    hq = i_h * G + rows % G  # query head of each row
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    p_q = q + i_b.to(tl.int64) * s_qb + t[:, None].to(tl.int64) * s_qt + hq[:, None] * s_qh + o_k[None, :]
    b_q = tl.load(p_q, mask=m_rows[:, None] & (o_k[None, :] < K), other=0.0)  # [BM, BK]

    lo = i_s * keys_per_split
    hi = tl.minimum(lo + keys_per_split, Tk)
    if CAUSAL:
        last_t = tl.minimum((i_r * BM + BM - 1) // G, Tq - 1)
        hi = tl.minimum(hi, last_t + Tk - Tq + 1)  # no row of this block sees a key past this
    limit = t + (Tk - Tq)  # the last key each row may see (causal)

    p_k = k + i_b.to(tl.int64) * s_kb + i_h * s_kh
    p_v = v + i_b.to(tl.int64) * s_vb + i_h * s_vh
    b_o = tl.zeros([BM, BV], dtype=tl.float32)
    b_l = tl.zeros([BM], dtype=tl.float32)
    if SOFTPICK:
        b_m = tl.zeros([BM], dtype=tl.float32)  # clamped at 0: exp2(-m) <= 1
    else:
        b_m = tl.full([BM], NEG_BIG, dtype=tl.float32)
    if SIGMOID:
        b_m = tl.zeros([BM], dtype=tl.float32) + bias2  # held fixed: see online_step
    for start_n in range(lo, hi, BN):
        o_n = start_n + tl.arange(0, BN)
        m_n = o_n < hi
        b_kT = tl.load(p_k + o_n[None, :].to(tl.int64) * s_kt + o_k[:, None],
                       mask=m_n[None, :] & (o_k[:, None] < K), other=0.0)  # [BK, BN]
        b_v = tl.load(p_v + o_n[:, None].to(tl.int64) * s_vt + o_v[None, :],
                      mask=m_n[:, None] & (o_v[None, :] < V), other=0.0)  # [BN, BV]
        visible = m_n[None, :] & m_rows[:, None]
        if CAUSAL:
            visible = visible & (o_n[None, :] <= limit[:, None])
        if HAS_MASK:
            keep = tl.load(mask + i_b.to(tl.int64) * s_mb + o_n, mask=m_n, other=0)
            visible = visible & (keep != 0)[None, :]
        b_s = tl.dot(b_q, b_kT)  # [BM, BN] raw scores; qk_scale (log2(e) folded in) goes into the exp2
        b_s = tl.where(visible, b_s, float("-inf"))
        b_o, b_l, b_m = online_step(b_s, b_v, b_o, b_l, b_m, visible, qk_scale, True, SOFTPICK, False, SIGMOID)

    row = ((i_s * B + i_b) * Tq + t).to(tl.int64) * HQ + hq  # index into [S, B, Tq, HQ]
    tl.store(o_part + row[:, None] * V + o_v[None, :], b_o, mask=m_rows[:, None] & (o_v[None, :] < V))
    tl.store(m_part + row, b_m, mask=m_rows)
    tl.store(l_part + row, b_l, mask=m_rows)


@triton.jit
def attention_combine_kernel(
    o_part, m_part, l_part, o, sink, n_rows, S, HQ, eps,
    V: tl.constexpr, BR: tl.constexpr, BV: tl.constexpr, SOFTPICK: tl.constexpr, HAS_SINK: tl.constexpr,
    SIGMOID: tl.constexpr,
):
    """Grid (cdiv(n_rows, BR),). Merge S partials of n_rows = B * Tq * HQ rows into o [n_rows, V]; with
    HAS_SINK (softmax) the per-head logit sink [HQ] joins every row's denominator once, here."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    m_rows = rows < n_rows
    o_v = tl.arange(0, BV)
    m_o = m_rows[:, None] & (o_v[None, :] < V)
    if SOFTPICK:
        b_max = tl.zeros([BR], dtype=tl.float32)
    else:
        b_max = tl.full([BR], NEG_BIG, dtype=tl.float32)
    for s in range(0, S):
        b_max = tl.maximum(b_max, tl.load(m_part + s * n_rows + rows, mask=m_rows, other=NEG_BIG))
    if HAS_SINK:
        b_sink = tl.load(sink + rows % HQ, mask=m_rows, other=0.0).to(tl.float32) * LOG2E
        b_max = tl.maximum(b_max, b_sink)
    b_den = tl.zeros([BR], dtype=tl.float32)
    b_o = tl.zeros([BR, BV], dtype=tl.float32)
    for s in range(0, S):
        b_w = tl.math.exp2(tl.load(m_part + s * n_rows + rows, mask=m_rows, other=NEG_BIG) - b_max)
        b_den += b_w * tl.load(l_part + s * n_rows + rows, mask=m_rows, other=0.0)
        p_o = o_part + (s * n_rows + rows[:, None]).to(tl.int64) * V + o_v[None, :]
        b_o += b_w[:, None] * tl.load(p_o, mask=m_o, other=0.0)
    if SOFTPICK:
        b_den = b_den + eps * tl.math.exp2(-b_max)
    elif SIGMOID:
        b_den = tl.full([BR], 1.0, dtype=tl.float32)  # unnormalised: the partials just add up
    else:
        if HAS_SINK:
            b_den += tl.math.exp2(b_sink - b_max)
        b_den = tl.where(b_den > 0, b_den, 1.0)  # a row that sees no key keeps o = 0
    b_o = b_o / b_den[:, None]
    tl.store(o + rows[:, None].to(tl.int64) * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_o)
