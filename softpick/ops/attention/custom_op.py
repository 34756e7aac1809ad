"""The autograd wiring shared by the fused attention custom ops (Triton and Hopper kernels).

Both kernel families expose a forward op ``fwd(q, k, v, cu_seqlens, norm, scale, causal, eps, sink,
max_seqlen) -> (o, lse)`` and a backward op ``bwd(do, q, k, v, o, lse, cu_seqlens, norm, scale,
causal, sink, max_seqlen) -> (dq, dk, dv, dsink)`` (dsink empty without a sink); ``norm`` is passed
through untouched (Triton: an int of ``triton.training.NORM_CODES``; Hopper: the softpick bool);
:func:`register_autograd` makes the second the first's backward.
"""

from __future__ import annotations


def register_autograd(fwd_op, bwd_op) -> None:
    """Register ``bwd_op`` as ``fwd_op``'s backward: gradients for q, k, v and sink; lse takes none."""

    def setup_context(ctx, inputs, output):
        q, k, v, cu_seqlens, norm, scale, causal, _, sink, max_seqlen = inputs
        o, lse = output
        ctx.save_for_backward(q, k, v, o, lse, cu_seqlens, sink)
        ctx.flags = (norm, scale, causal, max_seqlen)
        ctx.mark_non_differentiable(lse)

    def backward(ctx, do, _dlse):
        q, k, v, o, lse, cu_seqlens, sink = ctx.saved_tensors
        norm, scale, causal, max_seqlen = ctx.flags
        dq, dk, dv, dsink = bwd_op(do, q, k, v, o, lse, cu_seqlens, norm, scale, causal, sink, max_seqlen)
        dsink = dsink.to(sink.dtype) if sink is not None and ctx.needs_input_grad[8] else None
        no_grad_for = (None,) * 5  # cu_seqlens, norm, scale, causal, eps
        return (dq, dk, dv, *no_grad_for, dsink, None)

    fwd_op.register_autograd(backward, setup_context=setup_context)
