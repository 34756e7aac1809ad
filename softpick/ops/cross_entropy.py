"""Linear cross-entropy in token chunks: the loss of ``hidden @ weight.T`` without the [tokens, vocab] logits.

The LM head and the loss of a 64k-token step would hold [65536, 32000] logits in bf16, their float32
copy and its gradient (about 21 GB). :func:`linear_cross_entropy` instead walks the tokens in chunks
(``chunk_tokens`` rows at a time) and, in the forward, computes each chunk's logits, its loss and the
gradients of the hidden states and of the weight (the design of Liger-Kernel's and flame's fused
linear cross-entropy); the chunk's logits are freed before the next one. The backward only scales the
stored gradients by the incoming one. What is kept between forward and backward is the hidden states'
gradient ([tokens, hidden]) and the weight's ([vocab, hidden], float32) instead of logits.

Numerics follow the plain path ``F.cross_entropy(F.linear(hidden, weight).float(), labels)`` under
autocast: logits computed in the compute dtype (the autocast dtype, else the weight's), loss in
float32, the logits' gradient rounded to the compute dtype before the two gradient matmuls. The
weight's gradient is accumulated over chunks in float32.

On CUDA the chunk's softmax-minus-one-hot is a ``torch.compile``d function (two fused kernels reading the
logits once each); elsewhere, or when the caller is itself being compiled, it runs as written.
"""

from __future__ import annotations

import torch
from torch.profiler import record_function

CHUNK_TOKENS = 4096
"""Default rows per chunk: [4096, 32000] logits are 0.26 GB in bf16, large enough for full-speed matmuls."""

IGNORE_INDEX = -100


def _chunk_loss_and_grad(logits: torch.Tensor, labels: torch.Tensor, inv_count: torch.Tensor,
                         ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss float32 [], d(mean loss)/d(logits) [c, V] in logits.dtype) of logits [c, V], labels [c]."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1)  # [c]
    valid = labels != ignore_index
    target = torch.where(valid, labels, 0)
    picked = x.gather(1, target[:, None]).squeeze(1)
    loss = torch.where(valid, lse - picked, 0.0).sum()
    hit = torch.arange(x.shape[1], device=x.device)[None, :] == target[:, None]  # [c, V]
    grad = (torch.exp(x - lse[:, None]) - hit.float()) * (valid.float() * inv_count)[:, None]
    return loss, grad.to(logits.dtype)


_compiled_chunk = None


def _chunk_fn(device: torch.device, compiled: bool | None):
    global _compiled_chunk
    if compiled is None:
        compiled = device.type == "cuda"
    if not compiled or torch.compiler.is_compiling():
        return _chunk_loss_and_grad
    if _compiled_chunk is None:
        _compiled_chunk = torch.compile(_chunk_loss_and_grad, dynamic=False)
    return _compiled_chunk


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, chunk_tokens, dtype, compiled):
        chunk = _chunk_fn(hidden.device, compiled)
        with torch.autocast(hidden.device.type, enabled=False), record_function("softpick::linear_cross_entropy"):
            w = weight.to(dtype)  # [V, H]
            count = (labels != ignore_index).sum()
            inv_count = 1.0 / count.float()
            loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
                if ctx.needs_input_grad[1] else None
            for start in range(0, hidden.shape[0], chunk_tokens):
                h = hidden[start:start + chunk_tokens].to(dtype)  # [c, H]
                part, g = chunk(h @ w.T, labels[start:start + chunk_tokens], inv_count, ignore_index)
                loss = loss + part
                if grad_h is not None:
                    grad_h[start:start + chunk_tokens] = g @ w
                if grad_w is not None:
                    grad_w += (g.T @ h).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return loss * inv_count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        if grad_h is not None:
            grad_h = grad_h * grad_out.to(grad_h.dtype)
        if grad_w is not None:
            grad_w = (grad_w * grad_out).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                         ignore_index: int = IGNORE_INDEX, chunk_tokens: int = CHUNK_TOKENS,
                         compiled: bool | None = None) -> torch.Tensor:
    """Mean cross-entropy of the logits ``hidden @ weight.T`` against ``labels``, never holding all logits.

    Args:
        hidden: [N, H] hidden states (any float dtype; cast to the compute dtype chunk by chunk).
        weight: [V, H] LM-head weight (no bias).
        labels: [N] int targets; ``ignore_index`` rows count neither in the loss nor in the mean.
        chunk_tokens: rows per chunk (peak extra memory about chunk_tokens x V x 12 bytes).
        compiled: run the per-chunk softmax through ``torch.compile``; None = on CUDA.

    Returns:
        The float32 scalar loss, NaN when no label counts (as ``F.cross_entropy``). Gradients flow to
        ``hidden`` and ``weight`` (in their dtypes); the compute dtype is the autocast dtype when
        autocast is on for ``hidden``'s device, else ``weight.dtype``.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden [N, H] and weight [V, H] must share H; got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}.")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels must be [N] = [{hidden.shape[0]}], got {tuple(labels.shape)}.")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}.")
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
    return _LinearCrossEntropy.apply(hidden, weight, labels, ignore_index, chunk_tokens, dtype, compiled)


def shifted_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Next-token targets [B, T] of labels [B, T]: position t gets labels[t + 1], the last ``ignore_index``
    (so the hidden states need no shifted copy)."""
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), ignore_index)], dim=1)
