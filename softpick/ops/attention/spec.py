"""What an attention layer computes, said once: :class:`AttentionSpec`, the types of its fields, and the
helpers every backend shares (the ground floor of :mod:`softpick.ops.attention`: it imports no backend).

A model builds one spec from its config (:meth:`AttentionSpec.from_attn_type`); the backends of
:mod:`softpick.ops.attention.registry` (naive, SDPA, Triton, Hopper) read the normaliser, the sink kind,
eps and the scale from it and nothing else, so a new variant is one more value of :data:`Normaliser`
plus its math in each backend that takes it (docs/variants-howto.md). SSMax and the output gate act on
q and o around the op and stay in the model.

    softpick: w_ij = relu(e^s_ij - 1) / (sum_j' |e^s_ij' - 1| + eps)
    softmax:  w_ij = e^s_ij / ([e^b +] sum_j' e^s_ij')       (b: the sink logit, zero or learned)
    sigmoid:  w_ij = sigmoid(s_ij + sigmoid_bias)           (no normalisation; Ramapuram et al. 2024)
    s = scale * q_i . k_j, masked j excluded (weight 0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from softpick.errors import UserError
from softpick.ops.softpick.naive import DEFAULT_EPS

Normaliser = Literal["softpick", "softmax", "sigmoid"]
"""How scores become weights (the formulas in the module docstring)."""

SinkKind = Literal["none", "zero", "learned"]
"""A logit with no value in every softmax denominator: none; zero (softmax+1, "off by one"); learned
(one parameter per query head, as in gpt-oss)."""

Impl = Literal["naive", "sdpa", "triton", "cute"]
"""Names of the implementations a caller may ask for (``impl=``; None = the fastest that runs the inputs)."""

AttnType = Literal["softpick", "softmax", "softmax_plus_one", "sink", "sigmoid"]
"""The model config's ``attn_type``: a (normaliser, sink kind) pair, see :data:`ATTN_TYPES`."""

NORMALISERS: tuple[str, ...] = get_args(Normaliser)
SINK_KINDS: tuple[str, ...] = get_args(SinkKind)
IMPLS: tuple[str, ...] = get_args(Impl)
ATTN_TYPES: dict[str, tuple[Normaliser, SinkKind]] = {
    "softpick": ("softpick", "none"),
    "softmax": ("softmax", "none"),
    "softmax_plus_one": ("softmax", "zero"),
    "sink": ("softmax", "learned"),
    "sigmoid": ("sigmoid", "none"),
}
"""attn_type -> (normaliser, sink kind): the only place the config's names are translated."""


class UnsupportedInputs(UserError, NotImplementedError):
    """``impl="x"`` was asked for inputs its kernels cannot run: one line with x's reason and the way out."""


@dataclass(frozen=True)
class AttentionSpec:
    """The attention of one model (or one call): normaliser, sink kind, eps, scale and sigmoid's bias.
    Frozen, so ``torch.compile`` treats it as a constant.

    Fields:
        normaliser: "softpick", "softmax" or "sigmoid" (:data:`Normaliser`).
        sink: "none", "zero" or "learned" (:data:`SinkKind`); softmax only. With "learned" the caller
            passes the logits ``sink`` [HQ] to each call; "zero" needs none.
        eps: softpick's constant added to the unscaled denominator (ignored by softmax). Default 1e-6.
        scale: score scale; None = head_dim ** -0.5.
        sigmoid_bias: b of sigmoid attention, added to every scaled score (ignored by the others).
            arXiv 2409.04431 uses b = -ln(n) for sequences of n tokens, so that the weights of a row
            start near a sum of 1; a model takes its config's ``sigmoid_bias`` or -ln(max_position_embeddings).
    """

    normaliser: Normaliser = "softpick"
    sink: SinkKind = "none"
    eps: float = DEFAULT_EPS
    scale: float | None = None
    sigmoid_bias: float = 0.0

    def __post_init__(self) -> None:
        if self.normaliser not in NORMALISERS:
            raise ValueError(f"normaliser must be one of {NORMALISERS}, got {self.normaliser!r}.")
        if self.sink not in SINK_KINDS:
            raise ValueError(f"sink must be one of {SINK_KINDS}, got {self.sink!r}.")
        if self.sink != "none" and self.normaliser != "softmax":
            raise ValueError(f"a sink logit is a softmax variant; normaliser {self.normaliser!r} takes none.")
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}.")

    @classmethod
    def from_attn_type(cls, attn_type: AttnType, *, eps: float = DEFAULT_EPS, scale: float | None = None,
                       context: int = 1, sigmoid_bias: float | None = None) -> AttentionSpec:
        """The spec of a model config's ``attn_type`` (one of :data:`ATTN_TYPES`); sigmoid's bias is
        ``sigmoid_bias``, or when None -ln(``context``) (tokens)."""
        if attn_type not in ATTN_TYPES:
            raise ValueError(f"attn_type must be one of {tuple(ATTN_TYPES)}, got {attn_type!r}.")
        normaliser, sink = ATTN_TYPES[attn_type]
        bias = 0.0 if normaliser != "sigmoid" else -math.log(context) if sigmoid_bias is None else float(sigmoid_bias)
        return cls(normaliser=normaliser, sink=sink, eps=float(eps), scale=scale, sigmoid_bias=bias)

    def sink_logits(self, heads: int, device: torch.device, learned: torch.Tensor | None = None
                    ) -> torch.Tensor | None:
        """The sink logits [heads] float32 a call passes as ``sink``: None without a sink, zeros for
        softmax+1, ``learned`` (required) for a learned sink."""
        if self.sink == "none":
            return None
        if self.sink == "zero":
            return torch.zeros(heads, dtype=torch.float32, device=device)
        if learned is None:
            raise ValueError("a learned sink needs its logits (learned=[heads]).")
        return learned


@dataclass
class AttentionInputs:
    """The tensors of one call, as the backends' ``supports`` and ``run`` see them.

    q [B, T_q, HQ, K], k [B, T_k, H, K], v [B, T_k, H, V]; cu_seqlens [N + 1] (packed documents, B = 1);
    attention_mask [B, T_k] (nonzero = real key); sink [HQ] logits (softmax with a sink); kv_len a
    1-element int tensor (valid keys of a preallocated cache); max_seqlen the longest document of
    cu_seqlens when known. See :func:`softpick.ops.softpick_attention` for their meaning.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    causal: bool = True
    cu_seqlens: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    sink: torch.Tensor | None = None
    max_seqlen: int | None = None
    kv_len: torch.Tensor | None = None


def kernel_scale(scale: float | None, head_dim: int) -> float:
    """The score scale the fused kernels use (default head_dim ** -0.5); ValueError unless it is > 0."""
    scale = head_dim**-0.5 if scale is None else float(scale)
    if not scale > 0:
        raise ValueError(f"scale must be > 0 for the fused kernels, got {scale}; use impl='naive'.")
    return scale


def packed_docs(q: torch.Tensor, cu_seqlens: torch.Tensor | None, max_seqlen: int = 0) -> tuple[int, int]:
    """(number of documents, longest document) of q [B, T, HQ, K]; max_seqlen > 0 is taken as the
    longest (no host read of cu_seqlens, which would wait for the GPU)."""
    if cu_seqlens is None:
        return q.shape[0], q.shape[1]
    if max_seqlen > 0:
        return cu_seqlens.numel() - 1, max_seqlen
    return cu_seqlens.numel() - 1, int((cu_seqlens[1:] - cu_seqlens[:-1]).max())


__all__ = [
    "ATTN_TYPES", "IMPLS", "NORMALISERS", "SINK_KINDS", "AttentionInputs", "AttentionSpec", "AttnType", "Impl",
    "Normaliser", "SinkKind", "UnsupportedInputs", "kernel_scale", "packed_docs",
]
