"""Public attention ops: ``softpick_attention`` and ``softmax_attention``, layout [B, T, H, D].

Each dispatches to an implementation chosen by ``impl``:

- ``"naive"``: plain PyTorch (:mod:`softpick.ops.attention.naive`), works everywhere, the reference.
- ``"triton"``: the fused FlashAttention-style kernels: the training kernels
  (:mod:`softpick.ops.attention.triton.training`, forward and backward) when T_q == T_k and nothing is
  padded, else the KV-cache kernels (:mod:`softpick.ops.attention.triton.kv_cache`, forward only: decoding,
  chunked prefill, padded batches).
- ``"cute"``: the Hopper (sm_90) kernels in the CuTe DSL (:mod:`softpick.ops.attention.cute`, forward and
  backward; optional extra ``softpick[hopper]``), on H100/H200 with head dims 64, 128 or 256.
- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` (softmax only).
- ``None``: the fastest one that supports the inputs: the Hopper kernels where they run, else Triton on
  CUDA, else naive.
"""

from __future__ import annotations

import torch

from softpick.ops.attention.checks import check_attention_inputs
from softpick.ops.attention.naive import naive_attention, visible_keys
from softpick.ops.softpick.naive import DEFAULT_EPS

IMPLS = ("naive", "triton", "cute", "sdpa")
CUTE_MIN_QUERIES = 128
"""With ``impl=None``, queries shorter than keys go to the Hopper kernels from this many on (one query tile)."""


def _sdpa_attention(q, k, v, *, scale, causal, attention_mask, kv_len=None) -> torch.Tensor:
    """Softmax attention through torch SDPA; rows that see no key give 0, like the other impls."""
    B, Tq, HQ, _ = q.shape
    Tk, H = k.shape[1], k.shape[2]
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
    if attention_mask is None and kv_len is None and (not causal or Tq == Tk or Tq == 1):  # one query (decoding) sees every key
        o = torch.nn.functional.scaled_dot_product_attention(
            qt, kt, vt, is_causal=causal and Tq > 1, scale=scale, enable_gqa=HQ != H
        )
        return o.transpose(1, 2)
    mask = visible_keys(
        B, Tq, Tk, causal=causal, cu_seqlens=None, attention_mask=attention_mask, device=q.device, kv_len=kv_len
    )  # [B, 1, Tq, Tk]
    o = torch.nn.functional.scaled_dot_product_attention(
        qt, kt, vt, attn_mask=mask, scale=scale, enable_gqa=HQ != H
    )
    o = o.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)  # SDPA gives NaN for such rows
    return o.transpose(1, 2)


def _triton_kernels(q, k, v, attention_mask, cu_seqlens, sink, kv_len=None) -> tuple[str | None, str | None]:
    """("training" or "kv-cache", None): the Triton kernels that run these inputs; else (None, why neither does)."""
    from softpick.ops.attention.triton import kv_cache as decode, training as parallel

    training = "a preallocated cache (kv_len)" if kv_len is not None else parallel.supports(
        q, k, v, attention_mask=attention_mask)
    if training is None:
        return "training", None
    inference = decode.supports(q, k, v, cu_seqlens=cu_seqlens, sink=sink)
    if inference is None:
        return "kv-cache", None
    return None, training if inference == training else f"{training}; {inference}"


def _cute_problem(variant: str, q, k, v, attention_mask, sink) -> str | None:
    """None when the Hopper kernels run these inputs, else why not (one phrase)."""
    from softpick.ops.attention import cute

    return cute.supports(q, k, v, variant=variant, attention_mask=attention_mask, sink=sink)


def _resolve_impl(impl: str | None, variant: str, q, k, v, attention_mask, cu_seqlens, sink=None, kv_len=None) -> str:
    """The implementation to run: "naive", "sdpa", or for Triton "training" / "kv-cache" (its kernels)."""
    if impl is not None:
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS} or None, got {impl!r}.")
        if impl == "sdpa" and variant != "softmax":
            raise ValueError(f"impl 'sdpa' computes softmax only; it cannot run {variant} attention.")
        if impl == "sdpa" and cu_seqlens is not None:
            raise ValueError("impl 'sdpa' does not take cu_seqlens; use impl='triton' or 'naive'.")
        if impl == "sdpa" and sink is not None:
            raise ValueError("impl 'sdpa' has no sink logit; use impl='triton' or 'naive'.")
        if impl == "cute":
            reason = ("a preallocated cache (kv_len)" if kv_len is not None
                      else _cute_problem(variant, q, k, v, attention_mask, sink))
            if reason is not None:
                raise NotImplementedError(f"impl='cute' cannot run these inputs: {reason}; use impl='triton'.")
            return "cute"
        if impl != "triton":
            return impl
        kernels, reason = _triton_kernels(q, k, v, attention_mask, cu_seqlens, sink, kv_len)
        if kernels is None:
            raise NotImplementedError(f"impl='triton' cannot run these inputs: {reason}; use impl='naive'.")
        return kernels
    if q.is_cuda:
        # Decoding steps (a few queries against a long cache) stay on the split-K KV-cache kernels: the
        # Hopper kernels pad queries to 128-row tiles and run one program per tile.
        prefill = q.shape[1] == k.shape[1] or q.shape[1] >= CUTE_MIN_QUERIES
        if kv_len is None and prefill and _cute_problem(variant, q, k, v, attention_mask, sink) is None:
            return "cute"
        kernels, _ = _triton_kernels(q, k, v, attention_mask, cu_seqlens, sink, kv_len)
        if kernels is not None:
            return kernels
        if variant == "softmax" and cu_seqlens is None and sink is None:
            return "sdpa"
    return "naive"


def _attention(q, k, v, *, variant, scale, causal, cu_seqlens, attention_mask, eps, impl, sink=None, max_seqlen=None,
               kv_len=None):
    check_attention_inputs(q, k, v, cu_seqlens=cu_seqlens, attention_mask=attention_mask, max_seqlen=max_seqlen)
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
    which = _resolve_impl(impl, variant, q, k, v, attention_mask, cu_seqlens, sink, kv_len)
    if which == "naive":
        return naive_attention(
            q, k, v, variant=variant, scale=scale, causal=causal, cu_seqlens=cu_seqlens,
            attention_mask=attention_mask, eps=eps, sink=sink, kv_len=kv_len,
        )
    if which == "sdpa":
        return _sdpa_attention(q, k, v, scale=scale, causal=causal, attention_mask=attention_mask, kv_len=kv_len)
    if which == "cute":
        from softpick.ops.attention.cute import cute_attention

        return cute_attention(
            q, k, v, variant=variant, scale=scale, causal=causal, cu_seqlens=cu_seqlens, eps=eps, sink=sink,
            max_seqlen=max_seqlen,
        )
    if which == "training":
        from softpick.ops.attention.triton.training import parallel_attention

        return parallel_attention(
            q, k, v, variant=variant, scale=scale, causal=causal, cu_seqlens=cu_seqlens, eps=eps, sink=sink,
            max_seqlen=max_seqlen,
        )
    from softpick.ops.attention.triton.kv_cache import decode_attention

    return decode_attention(
        q, k, v, variant=variant, scale=scale, causal=causal, attention_mask=attention_mask, eps=eps, sink=sink,
        kv_len=kv_len,
    )


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
        impl: "naive", "triton", "cute" or None (fastest that supports the inputs).
        kv_len: a 1-element int tensor: only the first kv_len of the T_k keys are valid and the queries
            are the last T_q of those (a preallocated, partly filled cache; attention_mask still spans
            T_k). On the GPU it is read by the kernels only (no host sync, same launch every step);
            a CPU tensor slices k, v to kv_len. None = all T_k keys.

    Returns:
        [B, T_q, HQ, V] in q.dtype. Rows need not sum to 1; a query whose scores are all <= 0, or that
        sees no key, gets 0.
    """
    return _attention(
        q, k, v, variant="softpick", scale=scale, causal=causal, cu_seqlens=cu_seqlens,
        attention_mask=attention_mask, eps=eps, impl=impl, max_seqlen=max_seqlen, kv_len=kv_len,
    )


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
    """Softmax attention with the same signature as :func:`softpick_attention` (``eps`` is unused).

    ``impl`` may also be "sdpa" (torch's fused softmax attention). A query that sees no key gets 0.
    ``sink`` [HQ] adds a per-head logit b with no value to every denominator,
    ``w_ij = e^s_ij / (e^b + sum_j' e^s_ij')`` (differentiable; softmax+1 is b = 0): the sink-free
    baselines of gpt-oss (learnable sinks) and "off by one" attention.
    """
    return _attention(
        q, k, v, variant="softmax", scale=scale, causal=causal, cu_seqlens=cu_seqlens,
        attention_mask=attention_mask, eps=eps, impl=impl, sink=sink, max_seqlen=max_seqlen, kv_len=kv_len,
    )


__all__ = ["IMPLS", "naive_attention", "softmax_attention", "softpick_attention"]
