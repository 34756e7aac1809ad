"""One forward pass per batch that hands each layer's attention weights and output to observers.

Forward hooks on every decoder layer's attention module receive the weights [B, H, T, T] of that
layer, pass them to the observers, which reduce them to sums at once, and replace them by None in
the module's output, so transformers never keeps them: peak memory holds the attention map of one
layer, O(B * H * T^2), not of all layers. The attention hook is registered with ``prepend=True`` so
it runs before transformers' own output-capturing hooks.

Works with any causal LM whose decoder layers sit in one ``nn.ModuleList`` (Llama's
``model.layers``, GPT-2's ``transformer.h``, ours) and whose attention module returns
``(output, weights, ...)``, as every transformers attention does with the eager implementation.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
import torch
from torch import nn

from softpick.errors import BadValue, Unavailable
from softpick.analysis.data import Batch

NO_WEIGHT_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "flash_attention_3", "flex_attention", "paged_attention")
"""transformers attention implementations that never return weights: the analysis switches them to eager."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of decoder layers: the one whose length is ``config.num_hidden_layers``."""
    num_layers = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (num_layers is None or len(module) == num_layers):
            return module
    raise BadValue(f"cannot find the decoder layers of {type(model).__name__} (no ModuleList of {num_layers}).")


def attention_module(layer: nn.Module) -> nn.Module:
    """The self-attention child of one decoder layer (``self_attn``, ``attn``, ``attention``)."""
    for name in ("self_attn", "attn", "attention", "self_attention"):
        module = getattr(layer, name, None)
        if isinstance(module, nn.Module):
            return module
    raise BadValue(f"cannot find the attention module of {type(layer).__name__}; children: {list(layer._modules)}.")


def attn_implementation(model: nn.Module) -> str | None:
    return getattr(model.config, "_attn_implementation", None)


def ensure_attention_weights(model: nn.Module) -> None:
    """Switch implementations that return no weights (sdpa, flash, flex) to eager; others are kept.

    Custom implementations (e.g. softpick's own) are left alone: they are asked for weights with
    ``output_attentions=True`` and :func:`run_pass` fails if none come back.
    """
    if attn_implementation(model) not in NO_WEIGHT_IMPLEMENTATIONS:
        return
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:
        model.config._attn_implementation = "eager"


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
    handles = []

    def attention_hook(index: int):
        def hook(module, args, output):
            if not isinstance(output, tuple) or len(output) < 2 or output[1] is None:
                raise Unavailable(
                    f"layer {index}'s attention ({type(module).__name__}, attn_implementation="
                    f"{attn_implementation(model)!r}) returned no attention weights; load the model with "
                    "attn_implementation='eager'."
                )
            for observer in wants_attention:
                observer.on_attention(index, output[1], current["batch"])
            return (output[0], None, *output[2:])  # drop the map so nobody keeps it

        return hook

    def hidden_hook(index: int):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            for observer in wants_hidden:
                observer.on_hidden(index, hidden, current["batch"])

        return hook

    layers = decoder_layers(model)
    for index, layer in enumerate(layers):
        if wants_attention:
            handles.append(attention_module(layer).register_forward_hook(attention_hook(index), prepend=True))
        if wants_hidden:
            handles.append(layer.register_forward_hook(hidden_hook(index)))
    try:
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
    finally:
        for handle in handles:
            handle.remove()
