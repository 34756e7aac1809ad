"""The softpick function: ``softpick(x, dim=-1, eps=1e-6)``."""

from __future__ import annotations

import torch

from softpick.ops.softpick.naive import DEFAULT_EPS, naive_softpick


def softpick(
    x: torch.Tensor, dim: int = -1, eps: float = DEFAULT_EPS, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Numerically stable softpick along ``dim``:
    ``y_i = relu(exp(x_i) - 1) / (sum_j |exp(x_j) - 1| + eps)``, masked j excluded.

    ``eps`` is a constant added to the unscaled denominator. ``mask`` (bool, broadcastable to
    ``x``) and entries equal to -inf mark keys left out of the denominator. The result has the shape
    and dtype of ``x``; arithmetic is done in float32 (float64 for float64 input).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"softpick expects a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"softpick expects a floating-point tensor, got dtype {x.dtype}.")
    if eps < 0:
        raise ValueError(f"softpick eps must be >= 0, got {eps}.")
    return naive_softpick(x, dim=dim, eps=eps, mask=mask)


__all__ = ["DEFAULT_EPS", "naive_softpick", "softpick"]
