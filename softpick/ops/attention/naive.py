"""Reference attention in plain PyTorch: softpick or softmax, O(T_q * T_k) memory (packed documents:
O(longest document^2), one document at a time).

Layout everywhere is [B, T, H, D] (flash-attn / fla): HQ query heads, H key/value heads, G = HQ // H.
This is the readable truth that every fused kernel is tested against.
"""

from __future__ import annotations

import torch

from softpick.ops.softpick.naive import DEFAULT_EPS, naive_softpick

VARIANTS = ("softpick", "softmax")


def visible_keys(
    batch: int,
    q_len: int,
    k_len: int,
    *,
    causal: bool,
    cu_seqlens: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    device: torch.device,
    kv_len: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Bool mask [B or 1, 1, T_q, T_k] of the keys each query may see, or None when all are visible.

    Queries are the last ``q_len`` positions of the ``k_len`` keys (KV-cache convention), so with
    ``causal`` query i sees keys j <= i + (k_len - q_len). ``cu_seqlens`` [N + 1] keeps each query
    inside its own packed document (requires q_len == k_len, batch 1). ``attention_mask`` [B, T_k]
    (nonzero = real token) hides padded keys. ``kv_len`` (a 1-element int tensor) says only the first
    kv_len keys are valid and the queries are the last q_len of those (a preallocated cache); it is
    never read on the host.
    """
    mask = None
    k_pos = torch.arange(k_len, device=device)
    end = k_len if kv_len is None else kv_len.to(device=device, dtype=torch.long).reshape(1)
    if causal:
        q_pos = torch.arange(q_len, device=device) + (end - q_len)
        mask = (k_pos[None, :] <= q_pos[:, None])[None, None]  # [1, 1, Tq, Tk]
    if kv_len is not None:
        valid = (k_pos < end)[None, None, None]  # [1, 1, 1, Tk]
        mask = valid if mask is None else mask & valid
    if cu_seqlens is not None:
        seg = torch.zeros(k_len, dtype=torch.long, device=device)
        seg[cu_seqlens[1:-1].long()] = 1
        seg = seg.cumsum(0)  # document index of every token
        same = (seg[:, None] == seg[None, :])[None, None]  # [1, 1, T, T]
        mask = same if mask is None else mask & same
    if attention_mask is not None:
        pad = attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]  # [B, 1, 1, Tk]
        mask = pad.expand(batch, 1, q_len, k_len) if mask is None else mask & pad
    return mask


def naive_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    variant: str = "softpick",
    scale: float | None = None,
    causal: bool = True,
    cu_seqlens: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
    return_weights: bool = False,
    sink: torch.Tensor | None = None,
    kv_len: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention with softpick or softmax weights, computed in float32 (float64 stays float64).

    Args:
        q: [B, T_q, HQ, K]; k: [B, T_k, H, K]; v: [B, T_k, H, V]; HQ a multiple of H (GQA).
        variant: "softpick" or "softmax".
        scale: score scale, default K ** -0.5.
        causal, cu_seqlens, attention_mask: see :func:`visible_keys`.
        eps: softpick's constant denominator eps (ignored by softmax).
        return_weights: also return the weights [B, HQ, T_q, T_k] (float32 / float64).
        sink: [HQ] per-head sink logits b (softmax only): ``w_ij = e^s_ij / (e^b + sum_j' e^s_ij')``; the
            sink carries no value, so rows sum to less than 1. Softmax+1 is ``sink = 0``.
        kv_len: 1-element int tensor, the number of valid keys (see :func:`visible_keys`), or None.

    Returns:
        o [B, T_q, HQ, V] in q.dtype (and the weights when asked). Keys a query may not see never
        enter its denominator; a query that sees no key gets o = 0 for both variants.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")
    if sink is not None and variant != "softmax":
        raise ValueError(f"a sink logit is a softmax variant; variant {variant!r} takes none.")
    bounds = None if cu_seqlens is None or return_weights or torch.compiler.is_compiling() else cu_seqlens.tolist()
    if bounds and bounds[0] == 0 and bounds[-1] == q.shape[1] and len(bounds) > 2:
        # packed documents, one at a time (block-diagonal): memory O(longest document^2), not O(T^2)
        return torch.cat([
            naive_attention(q[:, a:b], k[:, a:b], v[:, a:b], variant=variant, scale=scale, causal=causal,
                            attention_mask=attention_mask, eps=eps, sink=sink)
            for a, b in zip(bounds[:-1], bounds[1:])
        ], dim=1)
    B, Tq, HQ, K = q.shape
    Tk, H = k.shape[1], k.shape[2]
    G = HQ // H
    scale = K**-0.5 if scale is None else scale
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf = q.to(acc)
    kf = k.to(acc).repeat_interleave(G, dim=2)  # [B, Tk, HQ, K]
    vf = v.to(acc).repeat_interleave(G, dim=2)  # [B, Tk, HQ, V]
    s = torch.einsum("bqhk,bthk->bhqt", qf, kf) * scale  # [B, HQ, Tq, Tk]
    mask = visible_keys(
        B, Tq, Tk, causal=causal, cu_seqlens=cu_seqlens, attention_mask=attention_mask, device=q.device,
        kv_len=kv_len,
    )
    if variant == "softpick":
        p = naive_softpick(s, dim=-1, eps=eps, mask=mask)
    else:
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        m = s.amax(dim=-1, keepdim=True).detach()
        if sink is not None:
            b = sink.to(acc).view(1, HQ, 1, 1)  # [1, HQ, 1, 1]
            m = torch.maximum(m, b.detach())
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # rows that see no key
        e = torch.exp(s - m)
        den = e.sum(dim=-1, keepdim=True)
        if sink is not None:
            den = den + torch.exp(b - m)
        p = e / torch.where(den > 0, den, torch.ones_like(den))
    o = torch.einsum("bhqt,bthv->bqhv", p, vf).to(q.dtype)  # [B, Tq, HQ, V]
    return (o, p) if return_weights else o

