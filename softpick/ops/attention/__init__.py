"""Public attention ops, layout [B, T, H, D]: :func:`attend` (any :class:`AttentionSpec`),
``softpick_attention`` and ``softmax_attention``.

Each call goes to a backend of :data:`BACKENDS` (:mod:`.registry`), highest priority first:

- ``"cute"``: the Hopper (sm_90) kernels in the CuTe DSL (:mod:`.cute`, forward and backward; optional
  extra ``softpick[hopper]``), on H100/H200 with head dims 64, 128 or 256.
- ``"triton"``: the fused FlashAttention-style kernels: the training kernels (:mod:`.triton.training`,
  forward and backward) when T_q == T_k and nothing is padded, else the KV-cache kernels
  (:mod:`.triton.kv_cache`, forward only: decoding, chunked prefill, padded batches).
- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` (softmax only).
- ``"naive"``: plain PyTorch (:mod:`.naive`), works everywhere, the reference.

``impl=None`` picks the first that runs the inputs (on CUDA: Hopper where it runs, else Triton, else
SDPA, else naive; on the CPU: naive); ``impl="x"`` runs x or raises one line saying why it cannot.
"""

from __future__ import annotations

from softpick.ops.attention import backends as _backends  # noqa: F401  (registers the fused backends)
from softpick.ops.attention.naive import naive_attention
from softpick.ops.attention.registry import BACKENDS, attend, select, softmax_attention, softpick_attention
from softpick.ops.attention.spec import IMPLS, AttentionInputs, AttentionSpec, UnsupportedInputs

__all__ = [
    "BACKENDS", "IMPLS", "AttentionInputs", "AttentionSpec", "UnsupportedInputs", "attend", "naive_attention",
    "select", "softmax_attention", "softpick_attention",
]
