"""Fused Triton attention kernels (softpick and softmax). Being written: see issue 4."""

from __future__ import annotations

import torch


def supports(q: torch.Tensor, *, attention_mask: torch.Tensor | None) -> str | None:
    """None when the Triton kernels can run these inputs, else the reason they cannot."""
    return "the Triton kernels are not built yet"


def parallel_attention(q, k, v, *, variant, scale, causal, cu_seqlens, eps):
    raise NotImplementedError("the Triton kernels are not built yet")
