"""Fused Triton attention (softpick, softmax or sigmoid), FlashAttention-2 style, layout [B, T, H, D].

Layers: kernels in :mod:`.triton_fwd` / :mod:`.triton_bwd`; host launchers ``_fwd`` / ``_bwd`` here
(allocate, pick the grid); two ``torch.library`` custom ops with fake and autograd registrations, so
``torch.compile`` traces through without a graph break; and the public :func:`parallel_attention`.

Tile plan: forward programs own BM query rows of one head of one document and walk key blocks (an
unmasked pass, then the causal diagonal / document end with a mask). Backward: a dk/dv kernel owns BN
keys of one KV head and walks the queries of all G heads of its group; a dq kernel owns BM query rows.
Tiles are autotuned over a few Hopper-chosen configs per head dim (seconds on the first call), and
per length class (:func:`tune_len`); on Hopper the forward may pick tiles that move q, k, v and o
through tensor descriptors (TMA, :func:`tma_allowed`), which need a Triton allocator for their
on-GPU set-up (:func:`_ensure_allocator` gives one unless the caller has).

Saved for backward: q, k, v, o and lse [B, T, HQ] (float32), i.e. O(T) extra memory; delta =
rowsum(o * do) is recomputed at the start of backward. Softmax may carry per-head sink logits
(softmax+1 is a sink of 0): they enter the forward's running state and lse; the backward kernels
are unchanged, and d(sink) = -sum_rows exp(sink - lse) delta is one reduction in PyTorch.

Numerics: fp32 accumulation; exp2 with log2(e) folded into the scale; the softpick running max is
clamped at 0 so exp(-m) <= 1 never overflows; eps is the constant of the unscaled denominator, exactly
as in :func:`softpick.ops.softpick.naive.naive_softpick`. Inputs must be bf16 or fp16 on CUDA (float32
on CUDA is declined by :func:`supports`, so the default dispatch uses another implementation); the
CPU interpreter (TRITON_INTERPRET=1, used by the tests) takes float32 and float16.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os

import torch

from softpick.ops.attention.custom_op import register_autograd
from softpick.ops.attention.spec import Normaliser, kernel_scale, packed_docs

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256
NORM_CODES = {"softmax": 0, "softpick": 1, "sigmoid": 2}
"""The custom ops' ``norm`` argument: the normaliser as an int (the kernels' SOFTPICK / SIGMOID switches).
The op's ``eps`` carries the normaliser's constant: softpick's eps, or sigmoid's bias b."""


def norm_flags(norm: int) -> dict:
    """The kernels' compile-time switches of a :data:`NORM_CODES` value."""
    return dict(SOFTPICK=norm == NORM_CODES["softpick"], SIGMOID=norm == NORM_CODES["sigmoid"])


def head_dim_support(q: torch.Tensor, v: torch.Tensor) -> str | None:
    """None when the head dims fit the kernels (multiples of 16 up to MAX_HEAD_DIM), else the reason."""
    for name, d in (("q/k", q.shape[-1]), ("v", v.shape[-1])):
        if d % 16 != 0 or d > MAX_HEAD_DIM:
            return f"{name} head dim {d} is not a multiple of 16 in [16, {MAX_HEAD_DIM}]"
    return None


MIN_TRITON = (3, 2)


@functools.lru_cache(maxsize=None)
def triton_problem() -> str | None:
    """None when a usable Triton is installed, else what is wrong with it (one phrase)."""
    try:
        import triton
    except ImportError:
        return "triton is not installed (pip install 'triton>=3.2'; it exists for Linux only)"
    version = tuple(int(part) for part in triton.__version__.split(".")[:2] if part.isdigit())
    if version < MIN_TRITON:
        return f"triton {triton.__version__} is older than {MIN_TRITON[0]}.{MIN_TRITON[1]}"
    return None


def device_support(q: torch.Tensor) -> str | None:
    """None when the Triton kernels can run on q's device and dtype, else the reason they cannot."""
    problem = None if torch.compiler.is_compiling() else triton_problem()  # eager calls check it first
    if problem is not None:
        return problem
    if q.is_cuda:
        if q.dtype not in (torch.bfloat16, torch.float16):
            return f"dtype {q.dtype} on CUDA (the kernels take bfloat16 or float16)"
        if torch.cuda.get_device_capability(q.device) < (8, 0):
            return "a GPU older than compute capability 8.0"
    elif q.device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET", "0") != "1":
            return "CPU tensors without TRITON_INTERPRET=1"
        if q.dtype not in (torch.float32, torch.float16):
            return f"dtype {q.dtype} in the Triton interpreter (it takes float32 or float16)"
    else:
        return f"device {q.device.type}"
    return None


def supports(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, attention_mask: torch.Tensor | None
) -> str | None:
    """None when the training kernels can run these inputs, else the reason they cannot (one phrase)."""
    if attention_mask is not None:
        return "padding masks (attention_mask) are not supported by the training kernels"
    if q.shape[1] != k.shape[1]:
        return f"q length {q.shape[1]} differs from k length {k.shape[1]} (KV cache / decoding)"
    return head_dim_support(q, v) or device_support(q)


def tune_len(max_len: int) -> int:
    """The autotuners' length class of the longest document: 1024 for short ones (tests, short
    prompts), else 16384, so a short first call does not choose the tiles of long ones. Both are
    multiples of 16, so Triton compiles one kernel for the two."""
    return 1024 if max_len <= 1024 else 16384


def pow2_block(n: int, low: int = 16) -> int:
    """The block size that covers n: the next power of two, at least low."""
    return max(low, 1 << (n - 1).bit_length())


def _dims(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict:
    HQ, K = q.shape[2], q.shape[3]
    H, V = k.shape[2], v.shape[3]
    return dict(HQ=HQ, H=H, K=K, V=V, BK=pow2_block(K), BV=pow2_block(V))


def tma_allowed(*tensors: torch.Tensor) -> bool:
    """Whether the kernels may move these [B, T, H, D] tensors through tensor descriptors (Hopper's TMA):
    a Triton that has them, a GPU of compute capability >= 9.0 (or the interpreter), head dims that are
    powers of two (a block never reads the next head's columns) and 16-byte aligned data.
    ``SOFTPICK_TMA=0`` in the environment turns them off."""
    import triton.language as tl

    if os.environ.get("SOFTPICK_TMA", "1") == "0" or not hasattr(tl, "make_tensor_descriptor"):
        return False
    first = tensors[0]
    if first.is_cuda and torch.cuda.get_device_capability(first.device) < (9, 0):
        return False
    return all(t.shape[-1] & (t.shape[-1] - 1) == 0 and t.data_ptr() % 16 == 0 for t in tensors)


def _scratch(size: int, alignment: int, stream: int | None) -> torch.Tensor:
    """Global memory Triton asks for at launch (the kernels' tensor descriptors are built on the GPU)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _ensure_allocator() -> None:
    """Give Triton an allocator for descriptor scratch unless the caller set one. Triton keeps it in a
    context variable, so each thread (autograd's backward runs in its own) needs it set."""
    import triton

    from softpick._compat import triton_allocator_unset

    if triton_allocator_unset():
        triton.set_allocator(_scratch)


def on_device_of(x: torch.Tensor):
    """Make x's GPU the current one while the kernels launch: Triton launches on the current device,
    and the descriptor scratch is allocated there."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _fwd(q, k, v, cu_seqlens, norm: int, scale: float, causal: bool, eps: float, sink=None, max_seqlen: int = 0):
    """o [B, T, HQ, V] in q.dtype and lse [B, T, HQ] float32."""
    from softpick.ops.attention.triton.training_fwd import attention_fwd_kernel

    B, T, HQ, _ = q.shape
    o = torch.empty(*q.shape[:3], v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.empty(B, T, HQ, dtype=torch.float32, device=q.device)
    n_docs, max_len = packed_docs(q, cu_seqlens, max_seqlen)

    def grid(meta):
        return (math.ceil(max_len / meta["BM"]), n_docs, HQ)

    tma = tma_allowed(q, k, v, o)
    if tma and q.is_cuda:
        _ensure_allocator()
    attention_fwd_kernel[grid](
        q, k, v, o, lse, sink, cu_seqlens, T, tune_len(max_len), scale * LOG2E, eps, **_dims(q, k, v),
        **norm_flags(norm), CAUSAL=causal, IS_VARLEN=cu_seqlens is not None, HAS_SINK=sink is not None, TMA_OK=tma,
    )
    return o, lse


def _bwd_rows(o, do, lse, softpick: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(delta [B, T, HQ] = rowsum(o * do) in float32, the dk/dv kernel's lse argument): lse itself for
    softmax, for softpick [B, T, HQ, 2] float32 pairs (lse in log2 units, exp(-lse))."""
    from softpick.ops.attention.triton.training_bwd import attention_bwd_preprocess_kernel

    delta = torch.empty_like(lse)
    lse_c = lse.new_empty(*lse.shape, 2) if softpick else lse
    n_rows, V = lse.numel(), o.shape[-1]
    attention_bwd_preprocess_kernel[(math.ceil(n_rows / 64),)](
        o, do, lse, delta, lse_c, n_rows, V=V, BT=64, BV=pow2_block(V), SOFTPICK=softpick
    )
    return delta, lse_c


def _bwd(do, q, k, v, o, lse, cu_seqlens, norm: int, scale: float, causal: bool, sink=None, max_seqlen: int = 0):
    """dq, dk, dv shaped and typed like q, k, v, and d(sink) [HQ] float32 (empty without a sink).

    The sink's gradient needs no kernel: its weight in row i is exp(b - lse_i) and it carries no value,
    so dL/db = -sum_i exp(b - lse_i) * delta_i.
    """
    from softpick.ops.attention.triton.training_bwd import attention_bwd_dkdv_kernel, attention_bwd_dq_kernel

    T, HQ, H = q.shape[1], q.shape[2], k.shape[2]
    dims = _dims(q, k, v)
    n_docs, max_len = packed_docs(q, cu_seqlens, max_seqlen)
    flags = dict(**norm_flags(norm), CAUSAL=causal, IS_VARLEN=cu_seqlens is not None)
    delta, lse_c = _bwd_rows(o, do, lse, flags["SOFTPICK"])
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    attention_bwd_dkdv_kernel[lambda meta: (math.ceil(max_len / meta["BN"]), n_docs, H)](
        q, k, v, do, lse_c, delta, dk, dv, cu_seqlens, T, tune_len(max_len), scale * LOG2E, scale, G=HQ // H,
        **dims, **flags,
    )
    attention_bwd_dq_kernel[lambda meta: (math.ceil(max_len / meta["BM"]), n_docs, HQ)](
        q, k, v, do, lse, delta, dq, cu_seqlens, T, tune_len(max_len), scale * LOG2E, scale, **dims, **flags
    )
    if sink is None:
        return dq, dk, dv, lse.new_empty(0)
    dsink = -(torch.exp(sink.float() - lse) * delta).sum(dim=(0, 1))  # [HQ]
    return dq, dk, dv, dsink


@torch.library.custom_op("softpick::attention_fwd", mutates_args=())
def attention_fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    norm: int,
    scale: float,
    causal: bool,
    eps: float,
    sink: torch.Tensor | None,
    max_seqlen: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused forward: (o [B, T, HQ, V], lse [B, T, HQ] float32) of contiguous q, k, v; norm a
    :data:`NORM_CODES` value, eps softpick's eps or sigmoid's bias; max_seqlen 0 = read the longest
    document from cu_seqlens."""
    with on_device_of(q):
        return _fwd(q, k, v, cu_seqlens, norm, scale, causal, eps, sink, max_seqlen)


@attention_fwd_op.register_fake
def _(q, k, v, cu_seqlens, norm, scale, causal, eps, sink, max_seqlen):
    o = q.new_empty(*q.shape[:3], v.shape[-1])
    return o, q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("softpick::attention_bwd", mutates_args=())
def attention_bwd_op(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    norm: int,
    scale: float,
    causal: bool,
    sink: torch.Tensor | None,
    max_seqlen: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused backward: (dq, dk, dv, dsink) from do and the forward's o and lse (dsink empty without a sink)."""
    with on_device_of(q):
        return _bwd(do.contiguous(), q, k, v, o, lse, cu_seqlens, norm, scale, causal, sink, max_seqlen)


@attention_bwd_op.register_fake
def _(do, q, k, v, o, lse, cu_seqlens, norm, scale, causal, sink, max_seqlen):
    dsink = lse.new_empty(0) if sink is None else sink.new_empty(sink.shape, dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dsink


register_autograd(attention_fwd_op, attention_bwd_op)


def parallel_attention(
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
    sigmoid_bias: float = 0.0,
) -> torch.Tensor:
    """Fused attention; inputs as in :func:`softpick.ops.softpick_attention` with T_q == T_k.

    Args:
        q: [B, T, HQ, K]; k: [B, T, H, K]; v: [B, T, H, V] (bf16/fp16 on CUDA), HQ a multiple of H.
        variant: "softpick", "softmax" or "sigmoid".
        scale: score scale, default K ** -0.5.
        causal: query i sees keys j <= i.
        cu_seqlens: [N + 1] offsets of N packed documents (B == 1), or None.
        eps: softpick's constant added to the unscaled denominator (unused by softmax).
        sink: [HQ] per-head sink logits (softmax only), differentiable; None for none.
        max_seqlen: the longest document of cu_seqlens (trusted), or None to read it from cu_seqlens.
        sigmoid_bias: b of sigmoid attention, ``w = sigmoid(s + b)`` (unused by the others).

    Returns:
        o [B, T, HQ, V] in q.dtype.
    """
    scale = kernel_scale(scale, q.shape[-1])
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(torch.int32).contiguous()
    constant = sigmoid_bias if variant == "sigmoid" else eps  # the op's eps slot
    o, _ = attention_fwd_op(
        q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens, NORM_CODES[variant], scale, bool(causal),
        float(constant), None if sink is None else sink.float().contiguous(), int(max_seqlen or 0),
    )
    return o
