"""KV caches of every kind behind one protocol, and appending to a ``DynamicCache`` without copying it.

``DynamicLayer.update`` concatenates (``torch.cat``), so decoding token t copies all t cached keys
and values of every layer: at batch 32 and 8k context that copy moves twice the bytes the attention
itself reads. :class:`TransformersCache` keeps, for each plain ``DynamicLayer``, a buffer with spare room
(grown by a quarter plus 256 positions when full) and writes only the new positions; the layer's
``keys`` / ``values`` become views of the buffer's first positions, so everything else that reads or
replaces them (``get_seq_length``, ``crop``, beam-search reordering, batch selection) keeps working: a
layer whose tensors were replaced by such an operation simply gets a new buffer at its next append.
A ``StaticCache`` (``generate(..., cache_implementation="static")``) preallocates every layer at its
maximum length; its ``update`` writes in place and returns the whole buffer, of which only the first
``cumulative_length`` positions hold tokens: that device tensor is returned as ``kv_len`` and the
attention reads it on the device (no host sync, no shape that changes per token, so the compiled
step of ``generate`` keeps one graph). Caches of any other kind (sliding, offloaded, quantized) go
through their own ``update``.

Every kind answers one protocol, :class:`KVCache` (``begin``, ``update(layer, k, v) -> (k, v, kv_len)``,
``end``): :func:`kv_cache` wraps what the model was given (None, a transformers cache, our own), so
the model's forward has no branch per cache kind.

:class:`StaticKVCache` is the cache of the fast decode loop (:mod:`softpick.models.fast_generate`):
one preallocated buffer per layer and a single device length for all layers, advanced once per
forward, so a whole decoding step can be captured in a CUDA graph.
"""

from __future__ import annotations

from typing import Protocol

import torch
from transformers.cache_utils import Cache, DynamicLayer, StaticLayer

from softpick._compat import check_cache_fields

check_cache_fields()  # the layer fields _append writes; a clear error if transformers moved them

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


def _append(cache: Cache, layer_idx: int, keys: torch.Tensor, values: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Append keys, values [B, H, T_new, D] to layer ``layer_idx`` of a transformers cache.

    Returns that layer's keys and values [B, H, T, D] and None, or for a ``StaticLayer`` its buffers
    [B, H, capacity, D] and the number of valid positions kv_len (an int tensor of one element on the
    cache's device; the new tokens are the last of them).
    """
    layers = getattr(cache, "layers", None)
    if layers is not None and layer_idx < len(layers) and type(layers[layer_idx]) is StaticLayer:
        keys, values = cache.update(keys, values, layer_idx)  # [B, H, max_len, D]
        return keys, values, layers[layer_idx].cumulative_length  # positions written, these tokens included
    if (
        layers is None or layer_idx >= len(layers) or type(layers[layer_idx]) is not DynamicLayer
        or getattr(cache, "offloading", False) or not layers[layer_idx].is_initialized
        or layers[layer_idx].keys.dim() != 4
    ):
        return (*cache.update(keys, values, layer_idx), None)
    layer = layers[layer_idx]
    old = layer.keys.shape[-2]
    new = old + keys.shape[-2]
    k_buf = _buffer(layer, "keys", layer.keys, new)
    v_buf = _buffer(layer, "values", layer.values, new)
    k_buf[:, :, old:new] = keys
    v_buf[:, :, old:new] = values
    layer.keys, layer.values = k_buf[:, :, :new], v_buf[:, :, :new]
    return layer.keys, layer.values, None


class KVCache(Protocol):
    """What the model asks of a KV cache, whatever its kind (see :func:`kv_cache`).

    A forward of T new tokens per row calls ``begin(T)`` once, ``update`` once per layer, ``end()`` once.
    ``fixed_shapes`` is True when every decoding step has the same shapes (a preallocated cache): the
    model then never tests the padding mask on the host (a sync, and a branch torch.compile would split).
    """

    fixed_shapes: bool

    def begin(self, num_new: int, device: torch.device) -> torch.Tensor:
        """Start a forward of ``num_new`` tokens; returns their positions, int64 [num_new] on ``device``."""

    def update(self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Store keys, values [B, H, T, D] of layer ``layer_idx``; returns (keys, values, kv_len): the
        keys and values to attend over [B, H, T_k, D] and, when only a prefix of them is valid, its
        length kv_len (int tensor of one element on the device, the new tokens its last positions), else None."""

    def end(self) -> None:
        """Finish the forward: the new tokens count as cached."""


class NoCache:
    """The cache of a forward without one: attend over the new tokens only, store nothing."""

    fixed_shapes = False

    def begin(self, num_new: int, device: torch.device) -> torch.Tensor:
        return torch.arange(num_new, device=device)

    def update(self, layer_idx, keys, values):
        return keys, values, None

    def end(self) -> None:
        pass


class TransformersCache:
    """A transformers ``Cache`` (dynamic, static, sliding, offloaded, ...) behind :class:`KVCache`.

    Dynamic layers grow in place (see the module docstring); static layers return their whole buffer
    and their device length as kv_len; other kinds go through their own ``update``.
    """

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        layers = getattr(cache, "layers", None) or [None]
        self.fixed_shapes = type(layers[0]) is StaticLayer

    def begin(self, num_new: int, device: torch.device) -> torch.Tensor:
        past = self.cache.get_seq_length()
        if isinstance(past, torch.Tensor):  # a StaticCache's device length: no host read
            return past.to(device) + torch.arange(num_new, device=device)
        return torch.arange(past, past + num_new, device=device)

    def update(self, layer_idx, keys, values):
        return _append(self.cache, layer_idx, keys, values)

    def end(self) -> None:
        pass


def kv_cache(cache: "Cache | StaticKVCache | None") -> KVCache:
    """The :class:`KVCache` view of whatever the model was given as ``past_key_values``."""
    if cache is None:
        return NoCache()
    if isinstance(cache, StaticKVCache):
        return cache
    return TransformersCache(cache)


class StaticKVCache:
    """Keys and values of every layer preallocated for (batch, max_len), written in place (a :class:`KVCache`).

    Attributes:
        keys, values: per layer [B, H, max_len, D] buffers (zeros until written; fixed addresses).
        length: int64 [1] on the device, the positions filled before the current forward.
        kv_len: int32 [1] on the device, ``length + T`` during a forward of T tokens (what the
            attention kernels read: the valid keys, the new ones included).
        fresh: True until the first forward ends. That forward (the prefill) attends over its own
            keys only, exactly like a forward without cache, so the fused training kernels run it.

    A forward brackets its layers with :meth:`begin` and :meth:`end`, so one shared length serves all
    layers and a decoding step's device work is the same every step (CUDA-graph capturable): decoding
    steps attend over the whole buffers, of which the kernels read the first kv_len positions.
    """

    fixed_shapes = True

    def __init__(self, num_layers: int, batch: int, num_kv_heads: int, head_dim: int, max_len: int,
                 device: torch.device | str, dtype: torch.dtype) -> None:
        shape = (batch, num_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.length = torch.zeros(1, dtype=torch.long, device=device)
        self.kv_len = torch.zeros(1, dtype=torch.int32, device=device)
        self.max_len = max_len
        self.fresh = True
        self._positions: torch.Tensor | None = None

    @classmethod
    def for_model(cls, config, batch: int, max_len: int, device: torch.device | str,
                  dtype: torch.dtype) -> "StaticKVCache":
        """A cache shaped for a :class:`~softpick.models.SoftpickConfig` (or any Llama-shaped config)."""
        return cls(config.num_hidden_layers, batch, config.num_key_value_heads, config.head_dim, max_len, device, dtype)

    def begin(self, num_new: int, device: torch.device | None = None) -> torch.Tensor:
        """Start a forward of ``num_new`` tokens per row; returns their cache positions, int64 [num_new]."""
        if self.fresh:
            if num_new > self.max_len:
                raise ValueError(f"{num_new} tokens do not fit a cache of {self.max_len} positions.")
            self._positions = torch.arange(num_new, device=self.length.device)
        else:
            self._positions = self.length + torch.arange(num_new, device=self.length.device)
        self.kv_len.copy_(self._positions[-1:] + 1)
        return self._positions

    def end(self) -> None:
        """Finish the forward: the new tokens count as cached."""
        self.length.copy_(self.kv_len)
        self.fresh = False

    def update(self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Write keys, values [B, H, T, D] at this forward's positions; see :meth:`KVCache.update`."""
        k_buf, v_buf = self.keys[layer_idx], self.values[layer_idx]
        if self.fresh:  # the prefill: positions 0 .. T-1, attention over these tokens only
            T = keys.shape[2]
            k_buf[:, :, :T] = keys
            v_buf[:, :, :T] = values
            return keys, values, None
        k_buf.index_copy_(2, self._positions, keys)
        v_buf.index_copy_(2, self._positions, values)
        return k_buf, v_buf, self.kv_len

    def get_seq_length(self, layer_idx: int = 0) -> torch.Tensor:
        """The positions filled, int64 [1] on the device."""
        return self.length
