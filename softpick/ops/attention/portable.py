"""``softpick_attention`` / ``softmax_attention`` with the public signature, always in plain PyTorch.

Exported model folders ship this module (with :mod:`softpick.ops.attention.naive` and the softpick
function it uses) so that ``trust_remote_code=True`` runs them on a machine where softpick is not
installed. It needs torch only; ``impl`` and ``max_seqlen`` are accepted for signature compatibility and
every call runs the naive reference (no Triton, no SDPA), which gives the same numbers as the fused
kernels to float32 rounding. The signatures must equal those of :mod:`softpick.ops` (defaults and
annotations included): :func:`softpick.models.export.write_remote_code` refuses to export otherwise, so
the shipped code cannot drift from the public op.
"""

from __future__ import annotations

import torch

from softpick.ops.attention.naive import naive_attention
from softpick.ops.softpick.naive import DEFAULT_EPS


def softpick_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = True,
    cu_seqlens: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
    impl: str | None = None,
    max_seqlen: int | None = None,
    kv_len: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softpick attention, q [B, T_q, HQ, K], k [B, T_k, H, K], v [B, T_k, H, V] -> [B, T_q, HQ, V] (naive).

    ``kv_len`` (1-element int tensor): only the first kv_len keys are valid (a preallocated cache).
    """
    return naive_attention(q, k, v, variant="softpick", scale=scale, causal=causal, cu_seqlens=cu_seqlens,
                           attention_mask=attention_mask, eps=eps, kv_len=kv_len)


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = True,
    cu_seqlens: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
    impl: str | None = None,
    sink: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    kv_len: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention (optionally with a per-head sink logit [HQ]), same layout as softpick_attention (naive)."""
    return naive_attention(q, k, v, variant="softmax", scale=scale, causal=causal, cu_seqlens=cu_seqlens,
                           attention_mask=attention_mask, sink=sink, kv_len=kv_len)


__all__ = ["softmax_attention", "softpick_attention"]
