"""The fused backends, registered ahead of the naive one (:mod:`.registry`) in priority order:

1. ``cute``: the Hopper (sm_90) kernels in the CuTe DSL (:mod:`.cute`, forward and backward; optional
   extra ``softpick[hopper]``), H100/H200, head dims 64, 128 or 256. ``impl=None`` leaves decoding
   steps (fewer than :data:`CUTE_MIN_QUERIES` queries against a longer cache) to the split-K kernels.
2. ``triton-training``: the Triton training kernels (:mod:`.triton.training`, forward and backward),
   T_q == T_k and nothing padded.
3. ``triton-kv-cache``: the Triton KV-cache kernels (:mod:`.triton.kv_cache`, forward only): decoding,
   chunked prefill, padded batches. ``impl="triton"`` asks for either of the two.
4. ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``, softmax without a sink.

Under ``impl=None`` the fused backends are taken on CUDA tensors only (the Triton interpreter and
SDPA on the CPU run when asked by name). Nothing here imports Triton or the DSL until a kernel runs.
"""

from __future__ import annotations

import torch

from softpick.ops.attention.naive import visible_keys
from softpick.ops.attention.registry import Backend, register
from softpick.ops.attention.spec import AttentionInputs, AttentionSpec

CUTE_MIN_QUERIES = 128
"""With ``impl=None``, queries shorter than keys go to the Hopper kernels from this many on (one query tile)."""


def _cpu_only_when_asked(spec: AttentionSpec, x: AttentionInputs) -> str | None:
    return None if x.q.is_cuda else "off CUDA the fused paths run only when asked for by name"


# -- SDPA --

def _sdpa_supports(spec: AttentionSpec, x: AttentionInputs) -> str | None:
    if spec.normaliser != "softmax":
        return f"{spec.normaliser} attention (SDPA computes softmax only)"
    if x.cu_seqlens is not None:
        return "packed documents (cu_seqlens)"
    if x.sink is not None:
        return "a sink logit"
    return None


def _sdpa_run(spec: AttentionSpec, x: AttentionInputs) -> torch.Tensor:
    """Softmax attention through torch SDPA; rows that see no key give 0, like the other backends."""
    q, k, v, causal = x.q, x.k, x.v, x.causal
    B, Tq, HQ, _ = q.shape
    Tk, H = k.shape[1], k.shape[2]
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
    if x.attention_mask is None and x.kv_len is None and (not causal or Tq == Tk or Tq == 1):
        # one query (decoding) sees every key
        o = torch.nn.functional.scaled_dot_product_attention(
            qt, kt, vt, is_causal=causal and Tq > 1, scale=spec.scale, enable_gqa=HQ != H
        )
        return o.transpose(1, 2)
    mask = visible_keys(
        B, Tq, Tk, causal=causal, cu_seqlens=None, attention_mask=x.attention_mask, device=q.device, kv_len=x.kv_len
    )  # [B, 1, Tq, Tk]
    o = torch.nn.functional.scaled_dot_product_attention(
        qt, kt, vt, attn_mask=mask, scale=spec.scale, enable_gqa=HQ != H
    )
    o = o.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)  # SDPA gives NaN for such rows
    return o.transpose(1, 2)


# -- Triton --

def _training_supports(spec: AttentionSpec, x: AttentionInputs) -> str | None:
    from softpick.ops.attention.triton import training

    if x.kv_len is not None:
        return "a preallocated cache (kv_len)"
    return training.supports(x.q, x.k, x.v, attention_mask=x.attention_mask)


def _training_run(spec: AttentionSpec, x: AttentionInputs) -> torch.Tensor:
    from softpick.ops.attention.triton.training import parallel_attention

    return parallel_attention(
        x.q, x.k, x.v, variant=spec.normaliser, scale=spec.scale, causal=x.causal, cu_seqlens=x.cu_seqlens,
        eps=spec.eps, sink=x.sink, max_seqlen=x.max_seqlen, sigmoid_bias=spec.sigmoid_bias,
    )


def _kv_cache_supports(spec: AttentionSpec, x: AttentionInputs) -> str | None:
    from softpick.ops.attention.triton import kv_cache

    return kv_cache.supports(x.q, x.k, x.v, cu_seqlens=x.cu_seqlens, sink=x.sink)


def _kv_cache_run(spec: AttentionSpec, x: AttentionInputs) -> torch.Tensor:
    from softpick.ops.attention.triton.kv_cache import decode_attention

    return decode_attention(
        x.q, x.k, x.v, variant=spec.normaliser, scale=spec.scale, causal=x.causal, attention_mask=x.attention_mask,
        eps=spec.eps, sink=x.sink, kv_len=x.kv_len, sigmoid_bias=spec.sigmoid_bias,
    )


# -- Hopper (CuTe DSL) --

def _cute_supports(spec: AttentionSpec, x: AttentionInputs) -> str | None:
    from softpick.ops.attention import cute

    if x.kv_len is not None:
        return "a preallocated cache (kv_len)"
    if spec.normaliser == "sigmoid":
        return "sigmoid attention (the Hopper kernels compute softpick and softmax)"
    return cute.supports(x.q, x.k, x.v, variant=spec.normaliser, attention_mask=x.attention_mask, sink=x.sink)


def _cute_passed_over(spec: AttentionSpec, x: AttentionInputs) -> str | None:
    # Decoding steps (a few queries against a long cache) stay on the split-K KV-cache kernels: the
    # Hopper kernels pad queries to 128-row tiles and run one program per tile.
    Tq, Tk = x.q.shape[1], x.k.shape[1]
    if Tq != Tk and Tq < CUTE_MIN_QUERIES:
        return f"{Tq} queries against {Tk} keys (decoding goes to the split-K kernels)"
    return None


def _cute_run(spec: AttentionSpec, x: AttentionInputs) -> torch.Tensor:
    from softpick.ops.attention.cute import cute_attention

    return cute_attention(
        x.q, x.k, x.v, variant=spec.normaliser, scale=spec.scale, causal=x.causal, cu_seqlens=x.cu_seqlens,
        eps=spec.eps, sink=x.sink, max_seqlen=x.max_seqlen,
    )


CUTE = Backend("cute", "cute", _cute_supports, _cute_run, passed_over=_cute_passed_over, fallback="triton")
TRITON_TRAINING = Backend("triton-training", "triton", _training_supports, _training_run,
                          passed_over=_cpu_only_when_asked)
TRITON_KV_CACHE = Backend("triton-kv-cache", "triton", _kv_cache_supports, _kv_cache_run,
                          passed_over=_cpu_only_when_asked)
SDPA = Backend("sdpa", "sdpa", _sdpa_supports, _sdpa_run, passed_over=_cpu_only_when_asked)

for _backend in (CUTE, TRITON_TRAINING, TRITON_KV_CACHE, SDPA):
    register(_backend)

__all__ = ["CUTE", "CUTE_MIN_QUERIES", "SDPA", "TRITON_KV_CACHE", "TRITON_TRAINING"]
