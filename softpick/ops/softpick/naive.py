"""Softpick, the rectified softmax replacement of arXiv 2504.20966, in plain PyTorch.

    y_i = relu(exp(x_i) - 1) / (sum_j |exp(x_j) - 1| + eps),   masked j excluded

eps is a constant added to the *unscaled* denominator, exactly as written above. The stable form
subtracts m = max(max_j x_j, 0) (the running max clamped at 0, so exp(-m) <= 1 never overflows):

    y_i = relu(exp(x_i - m) - exp(-m)) / (sum_j |exp(x_j - m) - exp(-m)| + eps * exp(-m))

which is the same number. Every implementation in this package (the Triton kernels included)
uses this meaning of eps, so their outputs agree.
"""

from __future__ import annotations

import torch

DEFAULT_EPS = 1e-6
"""Default eps of the softpick denominator (constant, unscaled; see the module docstring)."""


def naive_softpick(
    x: torch.Tensor,
    dim: int = -1,
    eps: float = DEFAULT_EPS,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softpick of ``x`` along ``dim``, computed in float32 (float64 stays float64).

    Args:
        x: scores of any shape.
        dim: the dimension that is normalised.
        eps: constant added to the unscaled denominator (see module docstring).
        mask: optional bool tensor broadcastable to ``x``; False entries are left out of the
            denominator and get output 0. Entries of ``x`` equal to -inf are treated as masked too
            (a literal -inf would otherwise add |0 - 1| = 1 to the denominator).

    Returns:
        A tensor shaped like ``x`` in ``x.dtype``. Rows need not sum to 1; a row whose entries are
        all <= 0 (or all masked) is all zeros.
    """
    out_dtype = x.dtype
    xf = x if x.dtype == torch.float64 else x.float()
    keep = xf > float("-inf")
    if mask is not None:
        keep = keep & mask.to(torch.bool)
    xf = torch.where(keep, xf, torch.zeros((), dtype=xf.dtype, device=xf.device))
    # y does not depend on m mathematically, so m carries no gradient.
    m = torch.where(keep, xf, torch.full((), float("-inf"), dtype=xf.dtype, device=xf.device))
    m = m.amax(dim=dim, keepdim=True).clamp(min=0).detach()
    neg_m = torch.exp(-m)
    e = torch.exp(xf - m) - neg_m  # exp(-m) * (exp(x) - 1)
    e = torch.where(keep, e, torch.zeros((), dtype=e.dtype, device=e.device))
    den = e.abs().sum(dim=dim, keepdim=True) + eps * neg_m
    return (torch.relu(e) / den).to(out_dtype)
