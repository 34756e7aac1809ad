"""The attention backends in priority order, and the public ops that pick one: :func:`attend`,
:func:`softpick_attention`, :func:`softmax_attention`.

A backend (:class:`Backend`) says whether it runs an :class:`~.spec.AttentionSpec` on given inputs
(``supports`` -> None or the reason, one phrase) and runs it (``run``). ``impl=None`` takes the first
backend in :data:`BACKENDS` that supports the inputs and is not passed over for them (``passed_over``:
e.g. the Triton interpreter on the CPU runs only when asked); ``impl="x"`` takes the first backend named
x that supports them, or raises :class:`~.spec.UnsupportedInputs` with every reason in one line.

This module holds only the naive backend (plain PyTorch, the reference); :mod:`softpick.ops.attention`
registers the fused ones ahead of it (:mod:`.backends`). Exported model folders ship this module as it
is, so their ops are these very functions with only the naive backend: an ``impl`` that names a backend
not registered there runs the naive one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from softpick.ops.attention.checks import check_attention_inputs
from softpick.ops.attention.naive import naive_attention
from softpick.ops.attention.spec import IMPLS, AttentionInputs, AttentionSpec, Impl, UnsupportedInputs
from softpick.ops.softpick.naive import DEFAULT_EPS


def _never(spec: AttentionSpec, x: AttentionInputs) -> str | None:
    return None


@dataclass(frozen=True)
class Backend:
    """One way to run attention.

    Fields:
        name: unique, e.g. "triton-training".
        impl: the ``impl`` value that asks for it (several backends may share one: Triton's two kernel sets).
        supports: (spec, inputs) -> None when it runs them, else the reason it cannot (one phrase).
        run: (spec, inputs) -> o [B, T_q, HQ, V] in q.dtype.
        passed_over: (spec, inputs) -> why ``impl=None`` skips it although it supports them, or None.
        fallback: the impl an error message suggests instead.
    """

    name: str
    impl: Impl
    supports: Callable[[AttentionSpec, AttentionInputs], str | None]
    run: Callable[[AttentionSpec, AttentionInputs], torch.Tensor]
    passed_over: Callable[[AttentionSpec, AttentionInputs], str | None] = _never
    fallback: Impl = "naive"


def _naive_run(spec: AttentionSpec, x: AttentionInputs) -> torch.Tensor:
    return naive_attention(
        x.q, x.k, x.v, variant=spec.normaliser, scale=spec.scale, causal=x.causal, cu_seqlens=x.cu_seqlens,
        attention_mask=x.attention_mask, eps=spec.eps, sink=x.sink, kv_len=x.kv_len, sigmoid_bias=spec.sigmoid_bias,
    )


NAIVE = Backend("naive", "naive", supports=_never, run=_naive_run)
"""Plain PyTorch (:func:`~.naive.naive_attention`): every spec, every input, the last resort."""

BACKENDS: list[Backend] = [NAIVE]
"""Every registered backend, highest priority first; the naive one stays last."""


def register(backend: Backend) -> None:
    """Add ``backend`` after the ones registered before it and ahead of the naive one."""
    if any(b.name == backend.name for b in BACKENDS):
        raise ValueError(f"an attention backend named {backend.name!r} is already registered.")
    BACKENDS.insert(len(BACKENDS) - 1, backend)


def select(spec: AttentionSpec, x: AttentionInputs, impl: Impl | None = None) -> Backend:
    """The backend that runs ``spec`` on ``x``: the first in :data:`BACKENDS` that supports the inputs
    (``impl=None``: and is not passed over for them), among those named ``impl`` when it is given.

    Raises ValueError for an unknown impl, :class:`~.spec.UnsupportedInputs` (one line: each reason of
    the backends named impl, and the way out) when none of them runs the inputs.
    """
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS} or None, got {impl!r}.")
    named = [b for b in BACKENDS if b.impl == impl]
    if not named:  # impl None, or (in a shipped naive-only copy) a backend that is not here
        return next(b for b in BACKENDS if b.supports(spec, x) is None and b.passed_over(spec, x) is None)
    reasons = []
    for backend in named:
        reason = backend.supports(spec, x)
        if reason is None:
            return backend
        reasons.append(reason)
    raise UnsupportedInputs(f"impl={impl!r} cannot run these inputs: {'; '.join(dict.fromkeys(reasons))}; "
                            f"use impl={named[0].fallback!r}.")


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: AttentionSpec,
    *,
    causal: bool = True,
    cu_seqlens: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    impl: Impl | None = None,
    sink: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    kv_len: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention as ``spec`` says, on the backend :func:`select` picks; arguments as
    :func:`softpick_attention`'s, and ``sink`` [HQ] the logits of a learned sink (spec.sink "learned";
    a "zero" sink needs none). Returns o [B, T_q, HQ, V] in q.dtype."""
    check_attention_inputs(q, k, v, cu_seqlens=cu_seqlens, attention_mask=attention_mask, max_seqlen=max_seqlen)
    if sink is not None and spec.sink != "learned":
        raise ValueError(f"sink logits were passed but the spec's sink is {spec.sink!r}; "
                         "use AttentionSpec(normaliser='softmax', sink='learned').")
    sink = spec.sink_logits(q.shape[2], q.device, sink)
    if sink is not None and (sink.dim() != 1 or sink.shape[0] != q.shape[2]):
        raise ValueError(f"sink must have shape [query heads] = [{q.shape[2]}], got {tuple(sink.shape)}.")
    if kv_len is not None:
        if cu_seqlens is not None:
            raise ValueError("kv_len (a preallocated cache) cannot be combined with cu_seqlens (packed documents).")
        if kv_len.numel() != 1 or kv_len.is_floating_point():
            raise ValueError(f"kv_len must be a 1-element integer tensor, got shape {tuple(kv_len.shape)} "
                             f"dtype {kv_len.dtype}.")
        if kv_len.device.type == "cpu" and not torch.compiler.is_compiling():
            # a host value costs no sync: attend over exactly the valid prefix, as an unpadded cache would
            n = int(kv_len)
            k, v = k[:, :n], v[:, :n]
            attention_mask = None if attention_mask is None else attention_mask[:, :n]
            kv_len = None
    x = AttentionInputs(q, k, v, causal=bool(causal), cu_seqlens=cu_seqlens, attention_mask=attention_mask,
                        sink=sink, max_seqlen=max_seqlen, kv_len=kv_len)
    return select(spec, x, impl).run(spec, x)


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
    impl: Impl | None = None,
    max_seqlen: int | None = None,
    kv_len: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softpick attention: ``o_i = sum_j w_ij v_j`` with
    ``w_ij = relu(exp(s_ij) - 1) / (sum_j' |exp(s_ij') - 1| + eps)``, ``s = scale * q.k``, masked j excluded.

    Args:
        q: [B, T_q, HQ, K] queries; k: [B, T_k, H, K] keys; v: [B, T_k, H, V] values. HQ must be a
            multiple of H (grouped-query attention). T_q <= T_k: queries are the last T_q positions.
        scale: score scale, default K ** -0.5.
        causal: query i sees keys j <= i + T_k - T_q.
        cu_seqlens: [N + 1] int32/int64 offsets of N documents packed in one row (B must be 1).
        max_seqlen: the longest document of cu_seqlens, if the caller knows it (e.g. from the lengths
            on the CPU): the Triton kernels then size their grid without reading cu_seqlens on the
            host, so a compiled model does not wait for the GPU. Eager calls check it.
        attention_mask: [B, T_k], nonzero for real tokens, zero for padding keys.
        eps: constant added to the unscaled denominator (default 1e-6).
        impl: "naive", "triton", "cute" or None (the first backend of :data:`BACKENDS` that runs the inputs).
        kv_len: a 1-element int tensor: only the first kv_len of the T_k keys are valid and the queries
            are the last T_q of those (a preallocated, partly filled cache; attention_mask still spans
            T_k). On the GPU it is read by the kernels only (no host sync, same launch every step);
            a CPU tensor slices k, v to kv_len. None = all T_k keys.

    Returns:
        [B, T_q, HQ, V] in q.dtype. Rows need not sum to 1; a query whose scores are all <= 0, or that
        sees no key, gets 0.
    """
    spec = AttentionSpec("softpick", eps=eps, scale=scale)
    return attend(q, k, v, spec, causal=causal, cu_seqlens=cu_seqlens, attention_mask=attention_mask, impl=impl,
                  max_seqlen=max_seqlen, kv_len=kv_len)


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
    impl: Impl | None = None,
    sink: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    kv_len: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention with the same signature as :func:`softpick_attention` (``eps`` is unused).

    ``impl`` may also be "sdpa" (torch's fused softmax attention). A query that sees no key gets 0.
    ``sink`` [HQ] adds a per-head logit b with no value to every denominator,
    ``w_ij = e^s_ij / (e^b + sum_j' e^s_ij')`` (differentiable; softmax+1 is b = 0): the sink-free
    baselines of gpt-oss (learnable sinks) and "off by one" attention.
    """
    spec = AttentionSpec("softmax", sink="none" if sink is None else "learned", eps=eps, scale=scale)
    return attend(q, k, v, spec, causal=causal, cu_seqlens=cu_seqlens, attention_mask=attention_mask, impl=impl,
                  sink=sink, max_seqlen=max_seqlen, kv_len=kv_len)


__all__ = ["attend", "softmax_attention", "softpick_attention"]
"""The ops (what :mod:`softpick.ops` exports from here); ``BACKENDS``, ``Backend``, ``register`` and
``select`` are the registry's own interface."""
