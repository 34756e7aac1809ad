"""Host side of the Hopper kernels: compile caches, the calls into FlashAttention-4's launchers, and the
``torch.library`` custom ops (with fake and autograd registrations, so ``torch.compile(fullgraph=True)``
traces them).

FlashAttention-4's launchers (``flash_attn.cute.interface._flash_attn_fwd`` / ``_flash_attn_bwd``) pick
tiles, pack GQA heads, allocate outputs and the fp32 dQ accumulator, run the preprocess and postprocess
kernels and compile on first use. For softpick they are called with our kernel classes and our own
compile caches swapped in (:func:`_kernels`), under one lock, so a softmax call never sees a softpick
kernel or cache entry. Softmax, softmax+1 and the learnable sink run FlashAttention-4's own kernels
(its ``learnable_sink``: forward, backward and the sink's gradient).

Compiled kernels are cached per process and, unless ``SOFTPICK_CUTE_CACHE=0``, on disk under
``$SOFTPICK_CUTE_CACHE_DIR`` (default ``~/.cache/softpick/cute``) in a folder named by a hash of these
sources and the pinned versions, so a changed kernel never loads a stale binary.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading
from pathlib import Path

import torch

from softpick.ops.attention.custom_op import register_autograd

from softpick.ops.attention.cute.pins import problem

_PROBLEM = problem()
if _PROBLEM is not None:  # the import-time check of the pinned DSL stack
    raise ImportError(f"softpick's Hopper kernels cannot load: {_PROBLEM}.")

_LOCK = threading.RLock()


@functools.lru_cache(maxsize=1)
def _fingerprint() -> str:
    """Hash of this package's CuTe sources and the pinned versions (names the disk cache folder)."""
    from softpick.ops.attention.cute.pins import PINS

    h = hashlib.sha256(repr(sorted(PINS.items())).encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path | None:
    """Where compiled kernels persist, or None when the disk cache is off (SOFTPICK_CUTE_CACHE=0)."""
    if os.environ.get("SOFTPICK_CUTE_CACHE", "1") == "0":
        return None
    root = os.environ.get("SOFTPICK_CUTE_CACHE_DIR") or os.path.join(Path.home(), ".cache", "softpick", "cute")
    return Path(root) / _fingerprint()


@functools.lru_cache(maxsize=None)
def _cache(name: str):
    """One compile cache of softpick kernels: in memory, backed by the disk folder when enabled."""
    from flash_attn.cute.cache_utils import JITCache, JITPersistentCache

    folder = cache_dir()
    return JITCache() if folder is None else JITPersistentCache(folder / name)


@contextlib.contextmanager
def _kernels(softpick: bool, forward: bool, eps: float = 0.0):
    """Run FlashAttention-4's forward (``forward``) or backward launcher with softpick's kernels and
    caches, or with its own for softmax."""
    from flash_attn.cute import interface

    with _LOCK:
        if not softpick:
            yield interface
            return
        from softpick.ops.attention.cute.kernels import (
            SoftpickBackwardSm90, SoftpickForwardSm90, softpick_forward_scope,
        )

        if forward:
            name, cls, launcher, cache = "FlashAttentionForwardSm90", SoftpickForwardSm90, interface._flash_attn_fwd, _cache(f"fwd-eps{eps!r}")
            scope = softpick_forward_scope(eps)
        else:
            name, cls, launcher, cache = "FlashAttentionBackwardSm90", SoftpickBackwardSm90, interface._flash_attn_bwd, _cache("bwd")
            scope = _bwd_tiles(interface)
        saved = getattr(interface, name), launcher.compile_cache
        with scope:
            setattr(interface, name, cls)
            launcher.compile_cache = cache
            try:
                yield interface
            finally:
                setattr(interface, name, saved[0])
                launcher.compile_cache = saved[1]


SOFTPICK_BWD_TILES = {
    64: dict(m_block_size=64, n_block_size=128, num_stages_Q=2, num_stages_dO=2, num_stages_PdS=2,
             SdP_swapAB=True, dKV_swapAB=False, dQ_swapAB=False, AtomLayoutMSdP=1, AtomLayoutNdKV=2,
             AtomLayoutMdQ=1, dQ_single_wg=True),
    128: dict(m_block_size=64, n_block_size=128, num_stages_Q=2, num_stages_dO=2, num_stages_PdS=2,
              SdP_swapAB=False, dKV_swapAB=False, dQ_swapAB=False, AtomLayoutMSdP=1, AtomLayoutNdKV=2,
              AtomLayoutMdQ=1),
}
"""Softpick's backward tiles where they differ from FlashAttention-4's softmax ones (head dim <= key):
its 128-row query tile at D <= 64 and its transposed S tile at D <= 128 leave softpick's dS step
spilling registers (``compile_check``: 22 and 4 spill instructions); these have none. D = 256 keeps
FlashAttention-4's tile (no spills)."""


@contextlib.contextmanager
def _bwd_tiles(interface):
    """Make FlashAttention-4's backward launcher pick :data:`SOFTPICK_BWD_TILES`."""
    original = interface._tile_size_bwd_sm90

    def tiles(head_dim, head_dim_v, causal, local, sparse_block_size_q=None):
        for limit, config in sorted(SOFTPICK_BWD_TILES.items()):
            if head_dim <= limit:
                return interface.BwdConfig(**config)
        return original(head_dim, head_dim_v, causal, local, sparse_block_size_q)

    interface._tile_size_bwd_sm90 = tiles
    try:
        yield
    finally:
        interface._tile_size_bwd_sm90 = original


def _flat(t: torch.Tensor, varlen: bool) -> torch.Tensor:
    """[1, T, H, D] -> [T, H, D] for varlen (FlashAttention-4's packed layout); else unchanged."""
    return t.view(t.shape[1:]) if varlen else t


def _varlen_kwargs(cu_seqlens, max_seqlen: int) -> dict:
    """FlashAttention-4's launcher arguments for packed documents (queries and keys share the offsets)."""
    if cu_seqlens is None:
        return {}
    return dict(cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=max_seqlen or None,
                max_seqlen_k=max_seqlen or None)


def _fwd(q, k, v, cu_seqlens, softpick: bool, scale: float, causal: bool, eps: float, sink, max_seqlen: int):
    """(o [B, T_q, HQ, V], lse) with lse natural-log, [B, HQ, T_q] (dense) or [HQ, T] (varlen)."""
    varlen = cu_seqlens is not None
    extra = _varlen_kwargs(cu_seqlens, max_seqlen)
    with _kernels(softpick, True, eps) as fa4:
        out, lse, *_ = fa4._flash_attn_fwd(
            _flat(q, varlen), _flat(k, varlen), _flat(v, varlen), softmax_scale=scale, causal=causal,
            learnable_sink=sink, return_lse=True, **extra,
        )
    return (out.unsqueeze(0) if varlen else out), lse


def _bwd(do, q, k, v, o, lse, cu_seqlens, softpick: bool, scale: float, causal: bool, sink, max_seqlen: int):
    """(dq, dk, dv) like q, k, v and d(sink) [HQ] float32 (empty without a sink)."""
    varlen = cu_seqlens is not None
    extra = _varlen_kwargs(cu_seqlens, max_seqlen)
    flat = [_flat(t, varlen) for t in (q, k, v, o, do)]
    with _kernels(softpick, False) as fa4:
        grads = fa4._flash_attn_bwd(
            *flat[:4], flat[4], lse, softmax_scale=scale, causal=causal, learnable_sink=sink,
            deterministic=torch.are_deterministic_algorithms_enabled(), **extra,
        )
    dq, dk, dv = (g.unsqueeze(0) if varlen else g for g in grads[:3])
    dsink = grads[3].float() if sink is not None else lse.new_empty(0)
    return dq, dk, dv, dsink


@torch.library.custom_op("softpick::cute_attention_fwd", mutates_args=())
def cute_attention_fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    softpick: bool,
    scale: float,
    causal: bool,
    eps: float,
    sink: torch.Tensor | None,
    max_seqlen: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hopper forward: (o [B, T_q, HQ, V], lse float32 in FlashAttention-4's layout) of contiguous q, k, v."""
    with torch.cuda.device(q.device):
        return _fwd(q, k, v, cu_seqlens, softpick, scale, causal, eps, sink, max_seqlen)


def _lse_shape(q: torch.Tensor, varlen: bool) -> tuple[int, ...]:
    B, T, HQ, _ = q.shape
    return (HQ, T) if varlen else (B, HQ, T)


@cute_attention_fwd_op.register_fake
def _(q, k, v, cu_seqlens, softpick, scale, causal, eps, sink, max_seqlen):
    o = q.new_empty(*q.shape[:3], v.shape[-1])
    return o, q.new_empty(_lse_shape(q, cu_seqlens is not None), dtype=torch.float32)


@torch.library.custom_op("softpick::cute_attention_bwd", mutates_args=())
def cute_attention_bwd_op(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    softpick: bool,
    scale: float,
    causal: bool,
    sink: torch.Tensor | None,
    max_seqlen: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hopper backward: (dq, dk, dv, dsink) from do and the forward's o and lse (dsink empty without a sink)."""
    with torch.cuda.device(q.device):
        return _bwd(do.contiguous(), q, k, v, o, lse, cu_seqlens, softpick, scale, causal, sink, max_seqlen)


@cute_attention_bwd_op.register_fake
def _(do, q, k, v, o, lse, cu_seqlens, softpick, scale, causal, sink, max_seqlen):
    dsink = lse.new_empty(0) if sink is None else sink.new_empty(sink.shape, dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dsink


register_autograd(cute_attention_fwd_op, cute_attention_bwd_op)
