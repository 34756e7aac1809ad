"""One forward pass per batch that hands each layer's attention weights and output to observers.

The hooks are :func:`softpick.models.probes.taps` (shared with the live metrics of training): each
layer's weights [B, H, T, T] go to the observers, which reduce them to sums at once, and are then
dropped, so peak memory holds the attention map of one layer, O(B * H * T^2), not of all layers.

Works with any causal LM whose decoder layers sit in one ``nn.ModuleList`` (Llama's
``model.layers``, GPT-2's ``transformer.h``, ours) and whose attention module returns
``(output, weights, ...)``, as every transformers attention does with the eager implementation.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
import torch
from torch import nn

from softpick.analysis.data import Batch
from softpick.models.probes import attn_implementation, decoder_layers, ensure_attention_weights, taps

__all__ = ["attn_implementation", "decoder_layers", "forward_kwargs", "run_pass"]


def forward_kwargs(model: nn.Module, batch: Batch, **extra) -> dict:
    """``input_ids``, ``attention_mask`` and, when the model takes them, ``position_ids`` + ``extra``."""
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if "position_ids" in inspect.signature(model.forward).parameters:
        kwargs["position_ids"] = batch.position_ids
    kwargs.update(extra)
    return kwargs


@torch.no_grad()
def run_pass(
    model: nn.Module, batches: Iterable[Batch], observers: list, *, progress: bool = False, desc: str = "analysis"
) -> None:
    """Forward every batch once (``use_cache=False``) and feed the observers.

    Args:
        model: a causal LM in eval mode; its device is the device of its first parameter.
        batches: from :func:`softpick.analysis.data.make_batches`.
        observers: objects with any of ``on_attention(layer, weights [B, H, T, T], batch)``,
            ``on_hidden(layer, hidden [B, T, D], batch)`` and ``on_logits(logits [B, T, V], batch)``.
        progress: show a tqdm bar.
    """
    device = next(model.parameters()).device
    wants_attention = [o for o in observers if hasattr(o, "on_attention")]
    wants_hidden = [o for o in observers if hasattr(o, "on_hidden")]
    wants_logits = [o for o in observers if hasattr(o, "on_logits")]
    if wants_attention:
        ensure_attention_weights(model)
    current: dict[str, Batch] = {}

    def on_attention(index: int, weights: torch.Tensor) -> None:
        for observer in wants_attention:
            observer.on_attention(index, weights, current["batch"])

    def on_hidden(index: int, hidden: torch.Tensor) -> None:
        for observer in wants_hidden:
            observer.on_hidden(index, hidden, current["batch"])

    with taps(model, on_attention if wants_attention else None, on_hidden if wants_hidden else None):
        batches = list(batches)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=desc, unit="batch")
        for batch in batches:
            batch = batch.to(device)
            current["batch"] = batch
            extra = {"use_cache": False}
            if wants_attention:
                extra["output_attentions"] = True
            out = model(**forward_kwargs(model, batch, **extra))
            for observer in wants_logits:
                observer.on_logits(out.logits, batch)
