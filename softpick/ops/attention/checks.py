"""Input checks at the public attention boundary: one clear error naming the bad value."""

from __future__ import annotations

import torch


def check_attention_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cu_seqlens: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    max_seqlen: int | None = None,
) -> None:
    """Raise ValueError unless q [B, T_q, HQ, K], k [B, T_k, H, K], v [B, T_k, H, V] fit together."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must have 4 dims [batch, time, heads, head_dim], got shape {tuple(t.shape)}."
            )
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got dtype {t.dtype}.")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}.")
    B, Tq, HQ, K = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"batch sizes differ: q {B}, k {k.shape[0]}, v {v.shape[0]}.")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"k and v must agree on [batch, time, heads], got {tuple(k.shape)} and {tuple(v.shape)}."
        )
    if k.shape[3] != K:
        raise ValueError(f"q and k head dims differ: q {K}, k {k.shape[3]}.")
    Tk, H = k.shape[1], k.shape[2]
    if H == 0 or HQ % H != 0:
        raise ValueError(
            f"the number of query heads ({HQ}) must be a multiple of the number of key/value heads ({H})."
        )
    if Tq > Tk:
        raise ValueError(
            f"q has more positions ({Tq}) than k ({Tk}); queries must be the last positions of the keys."
        )
    if cu_seqlens is not None:
        if attention_mask is not None:
            raise ValueError("pass either cu_seqlens or attention_mask, not both.")
        if B != 1:
            raise ValueError(
                f"batch size must be 1 with cu_seqlens, got {B}; flatten the batch into one packed row."
            )
        if Tq != Tk:
            raise ValueError(f"cu_seqlens needs q and k of equal length, got {Tq} and {Tk}.")
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"cu_seqlens must be a 1-D int32/int64 tensor, got shape {tuple(cu_seqlens.shape)} "
                f"dtype {cu_seqlens.dtype}."
            )
        # The value checks read the tensor, a graph break under torch.compile: eager calls run them.
        if not torch.compiler.is_compiling():
            _check_cu_seqlens_values(cu_seqlens, Tk, max_seqlen)
    elif max_seqlen is not None:
        raise ValueError(f"max_seqlen ({max_seqlen}) is the longest document of cu_seqlens; pass cu_seqlens too.")
    if attention_mask is not None:
        if tuple(attention_mask.shape) != (B, Tk):
            raise ValueError(
                f"attention_mask must have shape [batch, k_len] = [{B}, {Tk}], got {tuple(attention_mask.shape)}."
            )


def _check_cu_seqlens_values(cu_seqlens: torch.Tensor, total: int, max_seqlen: int | None) -> None:
    """Raise ValueError unless cu_seqlens runs strictly upwards from 0 to ``total`` and its longest
    document is at most ``max_seqlen`` (when given: an upper bound sizes the kernels' grid, a smaller one
    would leave rows uncomputed)."""
    if cu_seqlens.numel() < 2 or int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != total:
        raise ValueError(
            f"cu_seqlens must start at 0 and end at the packed length {total}, got {cu_seqlens.tolist()}."
        )
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    if bool((lengths <= 0).any()):
        raise ValueError(f"cu_seqlens must be strictly increasing, got {cu_seqlens.tolist()}.")
    longest = None if max_seqlen is None else int(lengths.max())
    if max_seqlen is not None and longest > max_seqlen:
        raise ValueError(f"max_seqlen must be at least the longest document of cu_seqlens, {longest}, "
                         f"got {max_seqlen}.")
