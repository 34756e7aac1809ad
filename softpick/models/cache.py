"""Appending to a transformers ``DynamicCache`` without copying the whole cache at every step.

``DynamicLayer.update`` concatenates (``torch.cat``), so decoding token t copies all t cached keys
and values of every layer: at batch 32 and 8k context that copy moves twice the bytes the attention
itself reads. :func:`append_to_cache` keeps, for each plain ``DynamicLayer``, a buffer with spare room
(grown by a quarter plus 256 positions when full) and writes only the new positions; the layer's
``keys`` / ``values`` become views of the buffer's first positions, so everything else that reads or
replaces them (``get_seq_length``, ``crop``, beam-search reordering, batch selection) keeps working: a
layer whose tensors were replaced by such an operation simply gets a new buffer at its next append.
A ``StaticCache`` (``generate(..., cache_implementation="static")``) preallocates every layer at its
maximum length; its ``update`` writes in place and returns the whole buffer, of which only the first
positions hold tokens, so the valid prefix is returned (the attention's causal convention, queries
are the last positions of the keys, needs it). Caches of any other kind (sliding, offloaded,
quantized) go through their own ``update``.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer, StaticLayer

from softpick._compat import check_cache_fields

check_cache_fields()  # the layer fields append_to_cache writes; a clear error if transformers moved them

GROWTH = 1.25
PAD = 256


def _buffer(layer: DynamicLayer, name: str, current: torch.Tensor, needed: int) -> torch.Tensor:
    """The layer's buffer for ``name`` ("keys"/"values") holding ``current`` as a prefix, with room for ``needed``."""
    buf = getattr(layer, f"_softpick_{name}_buffer", None)
    fits = (
        buf is not None and current.data_ptr() == buf.data_ptr() and current.shape[:2] == buf.shape[:2]
        and current.shape[-1] == buf.shape[-1] and current.dtype == buf.dtype and current.stride() == buf.stride()
        and buf.shape[-2] >= needed
    )
    if fits:
        return buf
    B, H, T, D = current.shape
    capacity = max(needed, int(T * GROWTH) + PAD)
    buf = current.new_empty(B, H, capacity, D)
    buf[:, :, :T] = current
    setattr(layer, f"_softpick_{name}_buffer", buf)
    return buf


def append_to_cache(cache: Cache, layer_idx: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Append keys, values [B, H, T_new, D] to layer ``layer_idx``; returns all of that layer's [B, H, T, D]."""
    layers = getattr(cache, "layers", None)
    if layers is not None and layer_idx < len(layers) and type(layers[layer_idx]) is StaticLayer:
        keys, values = cache.update(keys, values, layer_idx)  # [B, H, max_len, D]
        valid = int(layers[layer_idx].get_seq_length())  # positions written so far, these tokens included
        return keys[:, :, :valid], values[:, :, :valid]
    if (
        layers is None or layer_idx >= len(layers) or type(layers[layer_idx]) is not DynamicLayer
        or getattr(cache, "offloading", False) or not layers[layer_idx].is_initialized
        or layers[layer_idx].keys.dim() != 4
    ):
        return cache.update(keys, values, layer_idx)
    layer = layers[layer_idx]
    old = layer.keys.shape[-2]
    new = old + keys.shape[-2]
    k_buf = _buffer(layer, "keys", layer.keys, new)
    v_buf = _buffer(layer, "values", layer.values, new)
    k_buf[:, :, old:new] = keys
    v_buf[:, :, old:new] = values
    layer.keys, layer.values = k_buf[:, :, :new], v_buf[:, :, :new]
    return layer.keys, layer.values
