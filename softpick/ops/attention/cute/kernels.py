"""Softpick forward and backward kernels for Hopper (sm_90a), built on FlashAttention-4's CuTe-DSL kernels.

What is ours and what is the library's (``flash-attn-4``, pinned exactly in :mod:`.pins`):

- The kernel skeletons are FlashAttention-4's ``FlashAttentionForwardSm90`` / ``FlashAttentionBackwardSm90``
  (``flash_attn/cute/flash_fwd_sm90.py``, ``flash_bwd_sm90.py``): one TMA producer warpgroup, two or three
  consumer warpgroups doing async wgmma with the pointwise work overlapped (intra-warpgroup overlap of
  the next QK^T with the current P.V in the forward), dQ accumulated in fp32 by TMA bulk reduce-add in the
  backward, the preprocess (delta = rowsum(o * do)) and postprocess (dQ to 16 bits) kernels, varlen and
  GQA packing, tile schedulers. They are built on the DSL's ``cutlass.pipeline`` and ``cutlass.utils``.
- Forward: the skeleton's online softmax and mask are replaced by :class:`.online.SoftpickOnline` and
  :class:`.online.SoftpickMask` (see that module for the math). The skeleton looks both names up as
  module globals while it is traced, so :func:`softpick_forward_scope` binds them for the duration of a
  compile (under a lock) and restores them after; a compiled kernel keeps what it was traced with.
- Backward: :meth:`SoftpickBackwardSm90.mma_one_m_block` is our per-query-block step. It issues the same
  wgmmas in the same order as the softmax step it replaces, and computes softpick's pointwise part::

      E = exp2(a * s - lse2)          (= e^{x - lse}, lse2 = lse * log2 e from the preprocess kernel)
      t = E - c,  c = exp2(-lse2)     (t > 0 exactly where the score is > 0; masked scores give t = -c)
      P = relu(t)                     (relu folded into the f32 -> 16-bit convert, cvt.rn.relu)
      dS = (t + c) * (dP - delta) where t > 0, else (t + c) * delta
                                       (= e^{x - lse} ([x > 0] dP - sign(x) delta))

  c is computed once per LSE value a thread holds (``exp2`` of FlashAttention-4's per-thread LSE
  fragment) and read per row the way the LSE is (a shuffle among the threads sharing rows when the S
  tile is computed transposed), so no per-row array stays live into the dS step. Per score the step
  adds, to softmax's, one FADD before the P convert and an FADD and a select in dS. Measured A/B on an
  H200 (benchmarks/RESULTS.md): this form beat carrying the sign of the score in E (fewer instructions
  but 12 spill instructions at D=64), and at D <= 64 the backward runs 64-row query tiles
  (:func:`.launch._bwd_tiles`; FlashAttention-4 takes 128 for softmax), which removes the last spills.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Optional

import cutlass
import cutlass.cute as cute
from cutlass import Boolean, Float32, Int32, const_expr
from cutlass._mlir.dialects import llvm
from cutlass.cute.nvgpu import warpgroup
from cutlass.cutlass_dsl import T, dsl_user_op
from flash_attn.cute import flash_fwd_sm90, utils
from flash_attn.cute.flash_bwd_sm90 import FlashAttentionBackwardSm90
from flash_attn.cute.flash_fwd_sm90 import FlashAttentionForwardSm90
from flash_attn.cute.named_barrier import NamedBarrierBwd
from quack import copy_utils, layout_utils

from softpick.ops.attention.cute.online import SoftpickMask, softpick_online


class SoftpickForwardSm90(FlashAttentionForwardSm90):
    """FlashAttention-4's Hopper forward, traced inside :func:`softpick_forward_scope` (its own name keeps
    the compiled kernel apart from softmax's in profiles)."""


_SCOPE_LOCK = threading.Lock()


@contextlib.contextmanager
def softpick_forward_scope(eps: float):
    """Bind softpick's online step (with ``eps``), mask and relu-converting P cast in the forward
    skeleton's modules while a forward kernel is traced and compiled; restore FlashAttention-4's own
    names afterwards. Only forward kernels may be traced inside (the backward converts dS, which is
    signed, with the same helper)."""
    with _SCOPE_LOCK:
        saved = flash_fwd_sm90.Softmax, flash_fwd_sm90.AttentionMask, utils.cvt_f16
        flash_fwd_sm90.Softmax, flash_fwd_sm90.AttentionMask = softpick_online(eps), SoftpickMask
        utils.cvt_f16 = cvt_relu_f16_into  # the forward skeleton converts only P with it
        try:
            yield
        finally:
            flash_fwd_sm90.Softmax, flash_fwd_sm90.AttentionMask, utils.cvt_f16 = saved


@dsl_user_op
def cvt_relu_f16x2_f32(a: Float32, b: Float32, to_dtype: type, *, loc=None, ip=None) -> Int32:
    """Two fp32 values to a packed pair of bf16 / fp16, negatives to 0 (``cvt.rn.relu``)."""
    kind = "bf16x2" if to_dtype is cutlass.BFloat16 else "f16x2"
    return Int32(
        llvm.inline_asm(
            T.i32(),
            [Float32(a).ir_value(loc=loc, ip=ip), Float32(b).ir_value(loc=loc, ip=ip)],
            f"cvt.rn.relu.{kind}.f32 $0, $2, $1;",
            "=r,f,f",
            has_side_effects=False,
            is_align_stack=False,
            asm_dialect=llvm.AsmDialect.AD_ATT,
        )
    )


@cute.jit
def cvt_relu_f16_into(src: cute.Tensor, dst: cute.Tensor) -> None:
    """dst (bf16 / fp16 registers) = relu(src) (fp32 registers of the same size), two at a time."""
    dst_i32 = cute.recast_tensor(dst, cutlass.Int32)
    for i in cutlass.range_constexpr(cute.size(dst_i32)):
        dst_i32[i] = cvt_relu_f16x2_f32(src[2 * i], src[2 * i + 1], dst.element_type)


@cute.jit
def cvt_relu_f16(src: cute.Tensor, dtype: cutlass.Constexpr[type]) -> cute.Tensor:
    """relu(src) as a new bf16 / fp16 register tensor of src's shape."""
    dst = cute.make_rmem_tensor(src.shape, dtype)
    cvt_relu_f16_into(src, dst)
    return dst


class SoftpickBackwardSm90(FlashAttentionBackwardSm90):
    """FlashAttention-4's Hopper backward with softpick's pointwise step (see the module docstring)."""

    @cute.jit
    def _scores_to_shifted_probs(self, acc_S_mn: cute.Tensor, tLSErLSE: cute.Tensor, tLSErFloor: cute.Tensor,
                                 lane_idx: Int32, softmax_scale_log2: Float32) -> None:
        """acc_S (raw scores, masked ones -inf) -> t = e^{x - lse} - e^{-lse}, in place."""
        for r in cutlass.range_constexpr(cute.size(acc_S_mn, mode=[0])):
            lse2 = self._get_stat(tLSErLSE, r, lane_idx, shuffle=self.shuffle_LSE)
            floor = self._get_stat(tLSErFloor, r, lane_idx, shuffle=self.shuffle_LSE)
            for c in cutlass.range(cute.size(acc_S_mn, mode=[1]), unroll_full=True):
                acc_S_mn[r, c] = cute.math.exp2(acc_S_mn[r, c] * softmax_scale_log2 - lse2, fastmath=True) - floor

    @cute.jit
    def _grad_scores(self, acc_dP_mn: cute.Tensor, acc_S_mn: cute.Tensor, tLSErFloor: cute.Tensor,
                     tLSErdPsum: cute.Tensor, lane_idx: Int32) -> None:
        """acc_dP (dP = dO V^T) -> dS = e^{x - lse} ([x > 0] dP - sign(x) delta), in place."""
        for r in cutlass.range_constexpr(cute.size(acc_dP_mn, mode=[0])):
            floor = self._get_stat(tLSErFloor, r, lane_idx, shuffle=self.shuffle_LSE)
            delta = self._get_stat(tLSErdPsum, r, lane_idx, shuffle=self.shuffle_dPsum)
            for c in cutlass.range(cute.size(acc_dP_mn, mode=[1]), unroll_full=True):
                t = acc_S_mn[r, c]
                factor = acc_dP_mn[r, c] - delta if t > Float32(0.0) else delta
                acc_dP_mn[r, c] = (t + floor) * factor

    @cute.jit
    def mma_one_m_block(
        self,
        m_block: Int32,
        consumer_state_Q,
        consumer_state_dO,
        warp_group_idx: Int32,
        mma_qk_fn: Callable,
        mma_dov_fn: Callable,
        mma_pdo_fn: Callable,
        mma_dsq_fn: Callable,
        mma_dsk_fn: Callable,
        copy_P_r2s: Optional[Callable],
        copy_dS_r2s: Callable,
        pipeline_Q: cutlass.pipeline.PipelineAsync,
        pipeline_dO: cutlass.pipeline.PipelineAsync,
        tLSEsLSE: cute.Tensor,
        tLSEsdPsum: cute.Tensor,
        tdQsdQaccum: Optional[cute.Tensor],
        softmax_scale_log2: Float32,
        PdS_barrier: cutlass.pipeline.NamedBarrier,
        is_dQ_wg: cutlass.Constexpr[bool] = True,
        mask_fn: Optional[Callable] = None,
        score_mod_fn: Optional[Callable] = None,
        score_mod_bwd_fn: Optional[Callable] = None,
        dKV_accumulate: Boolean = True,
    ):
        """One query block against this CTA's key block: S, dP, then dV += P^T dO, dQ = dS K, dK += dS^T Q."""
        assert self.score_mod is None and self.score_mod_bwd is None, "softpick takes no score_mod"
        state_dO = consumer_state_Q if const_expr(self.Q_stage == self.dO_stage) else consumer_state_dO
        smem_Q = consumer_state_Q.index
        smem_dO = state_dO.index if const_expr(self.dO_stage > 1) else 0
        smem_PdS = smem_Q if const_expr(self.PdS_stage > 1) else 0
        lane_idx = cute.arch.lane_idx()

        # S = Q K^T and dP = dO V^T, both in flight; the pointwise work on S waits only for the first.
        pipeline_Q.consumer_wait(consumer_state_Q, pipeline_Q.consumer_try_wait(consumer_state_Q))
        acc_S = mma_qk_fn(A_idx=smem_Q, wg_wait=-1)
        tLSErLSE = copy_utils.load_s2r(tLSEsLSE[None, smem_Q])
        # e^{-lse} of the rows this thread holds (or shares by shuffles): read per row in both steps
        tLSErFloor = cute.make_fragment_like(tLSErLSE, Float32)
        tLSErFloor.store(cute.math.exp2(-tLSErLSE.load(), fastmath=True))
        pipeline_dO.consumer_wait(state_dO, pipeline_dO.consumer_try_wait(state_dO))
        acc_dP = mma_dov_fn(A_idx=smem_Q, wg_wait=1)
        if const_expr(mask_fn is not None):
            mask_fn(acc_S, m_block=m_block)
        acc_S_mn = layout_utils.reshape_acc_to_mn(acc_S, transpose=self.SdP_swapAB)
        self._scores_to_shifted_probs(acc_S_mn, tLSErLSE, tLSErFloor, lane_idx, softmax_scale_log2)
        tLSErdPsum = copy_utils.load_s2r(tLSEsdPsum[None, smem_dO])
        tdVrP = cvt_relu_f16(layout_utils.reshape_acc_to_frgA(acc_S), self.dtype)
        if const_expr(not self.mma_dkv_is_rs):
            if const_expr(self.PdS_stage == 1):
                PdS_barrier.arrive_and_wait()  # the previous block's P is consumed
            copy_P_r2s(tdVrP, dst_idx=smem_PdS)

        warpgroup.wait_group(0)  # dP is ready
        acc_dP_mn = layout_utils.reshape_acc_to_mn(acc_dP, transpose=self.SdP_swapAB)
        self._grad_scores(acc_dP_mn, acc_S_mn, tLSErFloor, tLSErdPsum, lane_idx)
        tdKrdS = utils.cvt_f16(layout_utils.reshape_acc_to_frgA(acc_dP), self.dtype)
        if const_expr(not self.mma_dkv_is_rs or (self.PdS_stage == 1 and self.mma_dkv_is_rs)):
            cute.arch.fence_view_async_shared()
            PdS_barrier.arrive_and_wait()  # P written (smem P), or the previous dS consumed
        copy_dS_r2s(tdKrdS, dst_idx=smem_PdS)

        # dV += P^T dO
        if const_expr(not self.mma_dkv_is_rs):
            mma_pdo_fn(A_idx=smem_PdS, B_idx=smem_dO, zero_init=not dKV_accumulate, wg_wait=-1)
        else:
            mma_pdo_fn(tCrA=tdVrP, B_idx=smem_dO, zero_init=not dKV_accumulate, wg_wait=-1)
        cute.arch.fence_view_async_shared()
        PdS_barrier.arrive_and_wait()  # dS is in shared memory for the dQ and dK wgmmas

        if const_expr(is_dQ_wg):
            acc_dQ = mma_dsk_fn(A_idx=smem_PdS, wg_wait=1)  # dQ = dS K
            pipeline_dO.consumer_release(state_dO)
            self._accumulate_dK(mma_dsq_fn, tdKrdS, smem_PdS, smem_Q, dKV_accumulate)
            # hand dQ to the warp that adds it into the fp32 accumulator by TMA reduce-add
            cute.arch.barrier(
                barrier_id=int(NamedBarrierBwd.dQEmptyWG0) + warp_group_idx,
                number_of_threads=self.num_threads_per_warp_group + cute.arch.WARP_SIZE,
            )
            cute.autovec_copy(cute.make_tensor(acc_dQ.iterator, cute.make_layout(tdQsdQaccum.shape)), tdQsdQaccum)
            cute.arch.fence_view_async_shared()
            cute.arch.barrier_arrive(
                barrier_id=int(NamedBarrierBwd.dQFullWG0) + warp_group_idx,
                number_of_threads=self.num_threads_per_warp_group + cute.arch.WARP_SIZE,
            )
            warpgroup.wait_group(0)
        else:
            self._accumulate_dK(mma_dsq_fn, tdKrdS, smem_PdS, smem_Q, dKV_accumulate)
            pipeline_dO.consumer_release(state_dO)
            warpgroup.wait_group(0)
        pipeline_Q.consumer_release(consumer_state_Q)
        consumer_state_Q.advance()
        consumer_state_dO.advance()
        return consumer_state_Q, consumer_state_dO

    @cute.jit
    def _accumulate_dK(self, mma_dsq_fn: Callable, tdKrdS: cute.Tensor, smem_PdS, smem_Q, dKV_accumulate: Boolean):
        """dK += dS^T Q (dS from shared memory, or from registers when the dK/dV wgmmas take A there)."""
        if const_expr(not self.mma_dkv_is_rs):
            mma_dsq_fn(A_idx=smem_PdS, B_idx=smem_Q, zero_init=not dKV_accumulate, wg_wait=1)
        else:
            mma_dsq_fn(tCrA=tdKrdS, B_idx=smem_Q, zero_init=not dKV_accumulate, wg_wait=1)
