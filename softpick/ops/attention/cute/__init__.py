"""Hopper (sm_90) fast path: softpick and softmax attention in the CuTe DSL, forward and backward.

GPU-only and optional (``pip install 'softpick[hopper]'``, exact pins in :mod:`.pins`): the Triton
kernels stay the portable path and the oracle these kernels are tested against. Modules:
:mod:`.online` (softpick's online step and mask for the forward), :mod:`.kernels` (the kernel classes,
built on FlashAttention-4's Hopper kernels; its docstring says what is ours), :mod:`.launch` (compile
caches, launches, custom ops). Nothing here imports the DSL until a kernel is asked for.
"""

from __future__ import annotations

import torch

from softpick.ops.attention.cute.pins import problem
from softpick.ops.attention.spec import Normaliser, kernel_scale, packed_docs

HEAD_DIMS = (64, 128, 256)
DTYPES = (torch.bfloat16, torch.float16)


def supports(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    variant: Normaliser,
    attention_mask: torch.Tensor | None,
    sink: torch.Tensor | None,
) -> str | None:
    """None when the Hopper kernels can run these inputs, else the reason they cannot (one phrase).

    They take q [B, T_q, HQ, D], k/v [B, T_k, H, D] with T_q <= T_k (queries are the last positions),
    D in :data:`HEAD_DIMS` for q, k and v, bf16 or fp16 on a GPU of compute capability 9.0, no padding
    mask (padded batches use the KV-cache kernels), and a sink logit only for softmax.
    """
    if not q.is_cuda:
        return f"device {q.device.type} (the Hopper kernels run on CUDA GPUs of compute capability 9.0)"
    capability = torch.cuda.get_device_capability(q.device)
    if capability != (9, 0):
        return f"a GPU of compute capability {capability[0]}.{capability[1]} (the Hopper kernels need 9.0)"
    if q.dtype not in DTYPES:
        return f"dtype {q.dtype} (the Hopper kernels take bfloat16 or float16)"
    if q.shape[-1] not in HEAD_DIMS or v.shape[-1] != q.shape[-1]:
        return f"head dims q/k {q.shape[-1]}, v {v.shape[-1]} (the Hopper kernels take equal dims in {HEAD_DIMS})"
    if attention_mask is not None:
        return "padding masks (attention_mask) are not supported by the Hopper kernels"
    if sink is not None and variant != "softmax":
        return "a sink logit with softpick"
    return problem()


def cute_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    variant: Normaliser,
    scale: float | None,
    causal: bool,
    cu_seqlens: torch.Tensor | None,
    eps: float,
    sink: torch.Tensor | None = None,
    max_seqlen: int | None = None,
) -> torch.Tensor:
    """Attention on the Hopper kernels; arguments as :func:`softpick.ops.softpick_attention`'s, checked
    by :func:`supports` first. Returns o [B, T_q, HQ, V] in q.dtype (differentiable in q, k, v, sink)."""
    from softpick.ops.attention.cute.launch import cute_attention_fwd_op

    scale = kernel_scale(scale, q.shape[-1])
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(torch.int32).contiguous()
        max_seqlen = packed_docs(q, cu_seqlens, max_seqlen or 0)[1]  # FlashAttention-4 needs the longest document
    o, _ = cute_attention_fwd_op(
        q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens, variant == "softpick", scale, bool(causal),
        float(eps), None if sink is None else sink.float().contiguous(), int(max_seqlen or 0),
    )
    return o


__all__ = ["DTYPES", "HEAD_DIMS", "cute_attention", "problem", "supports"]
