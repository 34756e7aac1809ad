"""Softpick's online step for the Hopper forward kernel, in the CuTe DSL.

The forward kernel (:mod:`.kernels`) keeps, per query row, a running max ``m >= 0`` (in raw-score units,
like FlashAttention-4's softmax state) and a running denominator ``d``. Each key block of scores ``s``
(raw q.k, fp32 accumulators of the QK^T wgmma) becomes, with ``a = scale * log2(e)``::

    m' = max(m, max_j s_j)                  (the max starts at 0, so it never is -inf)
    e_j = exp2(a * s_j - a * m'),  c = exp2(-a * m')   (= e^{x_j - m'} and e^{-m'}, x = scale * s)
    p_j = relu(e_j - c)                     (the P of the P.V wgmma: e_j - c is written over s, and the
                                             relu happens in the f32 -> 16-bit convert of P)
    d' = d * exp2(a * (m - m')) + sum_j |e_j - c|

and the same ``exp2(a * (m - m'))`` rescales the output accumulator. At the end
``o = acc / (d + eps * c)`` and ``lse = m' * scale + log(d + eps * c) = log(sum_j |e^{x_j} - 1| + eps)``,
natural log, the value the backward kernels and the Triton kernels use.

Masked keys must not enter ``d``: FlashAttention-4's masks write -inf, whose term would be
``|0 - c| = c``. :class:`SoftpickMask` turns a masked score into 0 instead, whose term
``|exp2(-a m') - c|`` is exactly 0 (the same exp2 of the same argument) and whose numerator is 0. The
mask runs only on the blocks that need one (the causal diagonal, the sequence end), so unmasked blocks
pay nothing for it.

Per score this costs, over softmax's online step, one FADD (``e - c``); the ``|.|`` folds into the FADD
of the sum and the relu into the convert (``cvt.rn.relu.bf16x2.f32``): the forward skeleton converts P with
``flash_attn.cute.utils.cvt_f16`` in every block but the first (which uses ``.to(dtype)``, so the first
block's relu is an FMNMX), and :func:`.kernels.softpick_forward_scope` binds that name to
:func:`.kernels.cvt_relu_f16_into` while the forward is traced (the skeleton converts nothing else with it).
"""

from __future__ import annotations

import math
import operator

import cutlass
import cutlass.cute as cute
from cutlass import Float32
from flash_attn.cute import utils
from flash_attn.cute.mask import AttentionMask
from flash_attn.cute.softmax import Softmax
from quack import layout_utils

LN2 = math.log(2.0)


class SoftpickOnline(Softmax):
    """Softpick's running state (row_max, row_sum) with FlashAttention-4's Softmax interface.

    ``EPS`` is a Python float fixed per compiled kernel (a subclass per value, :func:`softpick_online`).
    """

    EPS: float = 1e-6

    @classmethod
    def create(cls, scale_log2: Float32, num_rows: cutlass.Constexpr[int], arch: cutlass.Constexpr[int] = 80,
               softmax_scale: Float32 | None = None):
        row_max = cute.make_rmem_tensor(num_rows, Float32)
        row_sum = cute.make_rmem_tensor(num_rows, Float32)
        return cls(scale_log2, num_rows, row_max, row_sum, arch, softmax_scale)

    def reset(self) -> None:
        self.row_max.fill(0.0)
        self.row_sum.fill(0.0)

    @cute.jit
    def online_softmax(
        self,
        acc_S: cute.Tensor,
        is_first: cutlass.Constexpr[bool] = False,
        check_inf: cutlass.Constexpr[bool] = True,
    ) -> cute.Tensor:
        """Turn the scores acc_S into softpick numerators in place; return each row's O rescale."""
        acc_S_mn = layout_utils.reshape_acc_to_mn(acc_S)
        row_scale = cute.make_fragment_like(self.row_max, Float32)
        scale_log2 = self.scale_log2
        for r in cutlass.range(cute.size(self.row_max), unroll_full=True):
            scores = acc_S_mn[r, None].load()
            row_max_prev = Float32(0.0) if cutlass.const_expr(is_first) else self.row_max[r]
            row_max_cur = utils.fmax_reduce(scores, init_val=row_max_prev, arch=self.arch)
            row_max_cur = cute.arch.warp_reduction_max(row_max_cur, threads_in_group=4)
            self.row_max[r] = row_max_cur
            max_scaled = row_max_cur * scale_log2
            floor = cute.math.exp2(-max_scaled, fastmath=True)
            shifted = cute.math.exp2(scores * scale_log2 - max_scaled, fastmath=True) - floor
            if cutlass.const_expr(is_first):  # the first block's P is converted without a relu
                acc_S_mn[r, None].store(cute.where(shifted > Float32(0.0), shifted, Float32(0.0)))
            else:  # later blocks' P goes through cvt_relu_f16 (relu in the convert instruction)
                acc_S_mn[r, None].store(shifted)
            if cutlass.const_expr(is_first):
                row_scale[r] = 1.0
                self.row_sum[r] = utils.fadd_reduce(abs(shifted), init_val=None, arch=self.arch)
            else:
                row_scale[r] = cute.math.exp2((row_max_prev - row_max_cur) * scale_log2, fastmath=True)
                self.row_sum[r] = utils.fadd_reduce(
                    abs(shifted), init_val=self.row_sum[r] * row_scale[r], arch=self.arch
                )
        return row_scale

    @cute.jit
    def finalize(self, final_scale: Float32 = 1.0, sink_val: Float32 | cute.Tensor | None = None) -> cute.Tensor:
        """Row scales 1 / (d + eps * e^{-m}) for O; row_sum becomes the natural-log lse."""
        assert sink_val is None, "softpick has no sink logit"
        row_sum = self.row_sum
        row_sum.store(utils.warp_reduce(row_sum.load(), operator.add, width=4))  # the quad's partial sums
        row_scale = cute.make_fragment_like(self.row_max, Float32)
        for r in cutlass.range(cute.size(row_sum), unroll_full=True):
            max_scaled = self.row_max[r] * self.scale_log2
            den = row_sum[r] + self.EPS * cute.math.exp2(-max_scaled, fastmath=True)
            empty = den == 0.0  # only with eps = 0 and no positive score: o = 0, lse = -inf
            row_scale[r] = cute.arch.rcp_approx(den if not empty else 1.0) * final_scale
            row_sum[r] = (max_scaled + cute.math.log2(den, fastmath=True)) * LN2 if not empty else -Float32.inf
        return row_scale


_ONLINE_BY_EPS: dict[float, type] = {}


def softpick_online(eps: float) -> type:
    """The :class:`SoftpickOnline` subclass whose kernels add ``eps`` to the unscaled denominator."""
    if eps not in _ONLINE_BY_EPS:
        _ONLINE_BY_EPS[eps] = type(f"SoftpickOnline_{len(_ONLINE_BY_EPS)}", (SoftpickOnline,), {"EPS": float(eps)})
    return _ONLINE_BY_EPS[eps]


class SoftpickMask(AttentionMask):
    """FlashAttention-4's causal / sequence-end mask with masked scores set to 0 instead of -inf
    (a zero score has softpick weight 0 and adds 0 to the denominator)."""

    @cute.jit
    def apply_mask(self, acc_S: cute.Tensor, *args, **kwargs) -> None:
        super().apply_mask(acc_S, *args, **kwargs)
        for i in cutlass.range(cute.size(acc_S), unroll_full=True):
            acc_S[i] = Float32(0.0) if acc_S[i] == -Float32.inf else acc_S[i]
