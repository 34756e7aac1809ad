"""Attention and hidden-state probes: the paper's measurements as per-batch reductions, in one place.

``softpick analyze`` (:mod:`softpick.analysis`) and the live metrics of training
(``--metrics.analysis_freq``, :mod:`softpick.train.live_analysis`) both measure through this module,
so a sink rate logged at step 1,000 and the one of the final report mean the same thing:

- first-token mass of a head: the attention weight on each sample's first real token, averaged over
  every real query (sums and counts over batches, divided once); a head is a *sink head* when its mass
  exceeds ``sink_eps`` (0.3, Gu et al. 2024); the *sink rate* is the percentage of sink heads.
- sparsity: the percentage of causal entries (key <= query, both real tokens, the diagonal counts)
  whose weight is <= ``threshold`` (1e-5, the authors' value).
- hidden state of layer l: the residual stream the decoder layer returns, [B, T, D], before any final
  norm, over its elements at real positions: Pearson's (non-excess) kurtosis E[(x-mu)^4]/sigma^4 from
  float64 power sums around a shift, and max |x|.

:func:`taps` puts forward hooks on the decoder layers that hand each layer's attention weights
[B, H, T, T] and output [B, T, D] to callbacks and drop the weights at once (one layer's map in
memory at a time); :class:`LayerStats` accumulates the reductions of one layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from softpick.errors import BadValue, Unavailable

DEFAULT_SINK_EPS = 0.3
"""A head whose mean first-token mass exceeds this is a sink head (Gu et al. 2024; the authors' value)."""
DEFAULT_ZERO_THRESHOLD = 1e-5
"""An attention weight <= this counts as zero for sparsity (the authors' value)."""
NO_WEIGHT_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "flash_attention_3", "flex_attention", "paged_attention")
"""transformers attention implementations that never return weights: the probes switch them to eager."""


# -- which positions and entries count -------------------------------------------------------------
def valid_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Bool [B, T]: real (non-pad) tokens of ``attention_mask`` [B, T] (nonzero = real)."""
    return attention_mask.bool()


def first_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Long [B]: index of each sample's first real token (left padding moves it right)."""
    return valid_positions(attention_mask).int().argmax(dim=-1)


def attention_entries(attention_mask: torch.Tensor) -> torch.Tensor:
    """Bool [B, 1, T, T]: key j <= query i, both real tokens (the diagonal counts)."""
    valid = valid_positions(attention_mask)
    T = valid.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
    return (causal[None] & valid[:, :, None] & valid[:, None, :])[:, None]


# -- per-batch reductions --------------------------------------------------------------------------
def first_token_mass(weights: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(float64 [H] sum over real queries of the weight on the sample's first real token, number of
    real queries) for weights [B, H, T, T]."""
    B, H, T, _ = weights.shape
    first = first_positions(attention_mask).view(B, 1, 1, 1).expand(B, H, T, 1)
    on_first = weights.gather(-1, first).squeeze(-1).double()  # [B, H, T]
    valid = valid_positions(attention_mask)[:, None, :]  # [B, 1, T]
    return (on_first * valid).sum(dim=(0, 2)), int(valid.sum())


def zero_entries(weights: torch.Tensor, attention_mask: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int]:
    """(long [H] counted entries with weight <= threshold, counted entries per head) for weights [B, H, T, T]."""
    entries = attention_entries(attention_mask)  # [B, 1, T, T]
    return ((weights <= threshold) & entries).sum(dim=(0, 2, 3)), int(entries.sum())


@dataclass
class Moments:
    """Float64 power sums of x - shift (shift: the first batch's mean), count, min and max of a stream."""

    shift: float | None = None
    n: int = 0
    sums: torch.Tensor = field(default_factory=lambda: torch.zeros(4, dtype=torch.float64))
    min: float = math.inf
    max: float = -math.inf

    def add(self, x: torch.Tensor) -> None:
        """Fold in the values of ``x`` (any shape, any float dtype)."""
        x = x.double().flatten()
        if x.numel() == 0:
            return
        if self.shift is None:
            self.shift = float(x.mean())
        y = x - self.shift
        y2 = y * y
        self.sums += torch.stack([y.sum(), y2.sum(), (y2 * y).sum(), (y2 * y2).sum()]).cpu()
        self.n += x.numel()
        lo, hi = torch.aminmax(x)
        self.min, self.max = min(self.min, float(lo)), max(self.max, float(hi))

    @property
    def central(self) -> tuple[float, float, float]:
        """(mean, second, fourth central moment)."""
        s1, s2, s3, s4 = (v / self.n for v in self.sums.tolist())
        m2 = s2 - s1**2
        m4 = s4 - 4 * s1 * s3 + 6 * s1**2 * s2 - 3 * s1**4
        return self.shift + s1, m2, m4

    @property
    def kurtosis(self) -> float:
        """Pearson's (non-excess) kurtosis E[(x-mu)^4]/sigma^4; 3 for a Gaussian, NaN for a constant."""
        _, m2, m4 = self.central
        return m4 / m2**2 if m2 > 0 else float("nan")

    @property
    def max_abs(self) -> float:
        return max(abs(self.min), abs(self.max))


@dataclass
class LayerStats:
    """Everything the probes accumulate for one layer over batches (head sums on the CPU)."""

    mass: torch.Tensor | None = None  # [H] float64, first-token mass summed over queries
    queries: int = 0
    zeros: torch.Tensor | None = None  # [H] long
    entries: int = 0  # counted entries per head
    hidden: Moments = field(default_factory=Moments)

    def add_attention(self, weights: torch.Tensor, attention_mask: torch.Tensor, threshold: float) -> None:
        mass, queries = first_token_mass(weights, attention_mask)
        zeros, entries = zero_entries(weights, attention_mask, threshold)
        self.mass = mass.cpu() if self.mass is None else self.mass + mass.cpu()
        self.zeros = zeros.cpu() if self.zeros is None else self.zeros + zeros.cpu()
        self.queries += queries
        self.entries += entries

    def add_hidden(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.hidden.add(hidden[valid_positions(attention_mask)])

    def mass_per_head(self) -> list[float]:
        return (self.mass / self.queries).tolist()

    def sparsity_per_head(self) -> list[float]:
        """Percent of counted entries <= threshold, per head."""
        return (100.0 * self.zeros.double() / self.entries).tolist()


# -- where the maps come from ----------------------------------------------------------------------
def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of decoder layers: the one whose length is ``config.num_hidden_layers``."""
    num_layers = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (num_layers is None or len(module) == num_layers):
            return module
    raise BadValue(f"cannot find the decoder layers of {type(model).__name__} (no ModuleList of {num_layers}).")


def attention_module(layer: nn.Module) -> nn.Module:
    """The self-attention child of one decoder layer (``self_attn``, ``attn``, ``attention``), through
    activation-checkpoint and torch.compile wrappers."""
    for name in ("self_attn", "attn", "attention", "self_attention"):
        module = getattr(layer, name, None)
        if isinstance(module, nn.Module):
            return module
    for wrapped in ("_checkpoint_wrapped_module", "_orig_mod"):
        if isinstance(getattr(layer, wrapped, None), nn.Module):
            return attention_module(getattr(layer, wrapped))
    raise BadValue(f"cannot find the attention module of {type(layer).__name__}; children: {list(layer._modules)}.")


def attn_implementation(model: nn.Module) -> str | None:
    return getattr(model.config, "_attn_implementation", None)


def ensure_attention_weights(model: nn.Module) -> None:
    """Switch implementations that return no weights (sdpa, flash, flex) to eager; others are kept.

    Custom implementations (e.g. softpick's own, whose weights come from the naive reference) are
    left alone: they are asked for weights with ``output_attentions=True``.
    """
    if attn_implementation(model) not in NO_WEIGHT_IMPLEMENTATIONS:
        return
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:
        model.config._attn_implementation = "eager"


@contextmanager
def taps(
    model: nn.Module,
    on_attention: Callable[[int, torch.Tensor], None] | None = None,
    on_hidden: Callable[[int, torch.Tensor], None] | None = None,
) -> Iterator[None]:
    """Forward hooks on every decoder layer while the context is open.

    ``on_attention(layer, weights [B, H, T, T])`` gets each layer's map (forward with
    ``output_attentions=True``), which is then replaced by None in the module's output so transformers
    never keeps it; the hook runs before transformers' own output-capturing hooks (``prepend``).
    ``on_hidden(layer, hidden [B, T, D])`` gets each layer's output hidden state.
    """
    handles = []

    def attention_hook(index: int):
        def hook(module, args, output):
            if not isinstance(output, tuple) or len(output) < 2 or output[1] is None:
                raise Unavailable(
                    f"layer {index}'s attention ({type(module).__name__}, attn_implementation="
                    f"{attn_implementation(model)!r}) returned no attention weights; load the model with "
                    "attn_implementation='eager'."
                )
            on_attention(index, output[1])
            return (output[0], None, *output[2:])  # drop the map so nobody keeps it

        return hook

    def hidden_hook(index: int):
        def hook(module, args, output):
            on_hidden(index, output[0] if isinstance(output, tuple) else output)

        return hook

    try:
        for index, layer in enumerate(decoder_layers(model)):
            if on_attention is not None:
                handles.append(attention_module(layer).register_forward_hook(attention_hook(index), prepend=True))
            if on_hidden is not None:
                handles.append(layer.register_forward_hook(hidden_hook(index)))
        yield
    finally:
        for handle in handles:
            handle.remove()


# -- the live probe of training ---------------------------------------------------------------------
LIVE_METRICS = ("sink_rate", "first_token_mass", "sparsity", "max_abs", "kurtosis")
"""What ``--metrics.analysis_freq`` logs, per layer and over all layers (see :func:`summarize`)."""


@torch.no_grad()
def probe_layers(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
    *, threshold: float = DEFAULT_ZERO_THRESHOLD,
) -> list[LayerStats]:
    """One forward of a batch ([B, T] each) with every layer's attention map and output reduced.

    Runs eagerly (a ``torch.compile``-d block too: ``set_stance("force_eager")``), in eval mode and,
    for a transformers model on sdpa/flash attention, with eager attention; then restores both. Under
    tensor parallel each rank sees its own heads (see :func:`merge_heads`).
    """
    layers: dict[int, LayerStats] = {}
    stats = lambda i: layers.setdefault(i, LayerStats())  # noqa: E731
    was_training, implementation = model.training, attn_implementation(model)
    model.eval()
    ensure_attention_weights(model)
    try:
        with taps(model, on_attention=lambda i, w: stats(i).add_attention(w, attention_mask, threshold),
                  on_hidden=lambda i, h: stats(i).add_hidden(h, attention_mask)), \
                torch.compiler.set_stance("force_eager"):
            model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=False, output_attentions=True)
    finally:
        model.train(was_training)
        if attn_implementation(model) != implementation:
            if hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation(implementation)
            else:
                model.config._attn_implementation = implementation
    return [layers[i] for i in sorted(layers)]


def summarize(layers: list[LayerStats], sink_eps: float = DEFAULT_SINK_EPS) -> dict[str, float]:
    """The live metrics as flat scalars: ``NAME`` over all layers and ``NAME/layer_l`` for every layer.

    ``sink_rate`` (% of heads with first-token mass > sink_eps), ``first_token_mass`` (mean over heads),
    ``sparsity`` (% of counted entries <= threshold), ``max_abs`` (max |hidden|; over layers: the max)
    and ``kurtosis`` (Pearson; over layers: the max), the same definitions as ``softpick analyze``.
    """
    out: dict[str, float] = {}
    masses = [l.mass_per_head() for l in layers]
    sparsity = [l.sparsity_per_head() for l in layers]
    heads = sum(len(m) for m in masses)
    for i, layer in enumerate(layers):
        out[f"sink_rate/layer_{i}"] = 100.0 * sum(m > sink_eps for m in masses[i]) / len(masses[i])
        out[f"first_token_mass/layer_{i}"] = sum(masses[i]) / len(masses[i])
        out[f"sparsity/layer_{i}"] = sum(sparsity[i]) / len(sparsity[i])
        out[f"max_abs/layer_{i}"] = layer.hidden.max_abs
        out[f"kurtosis/layer_{i}"] = layer.hidden.kurtosis
    out["sink_rate"] = 100.0 * sum(m > sink_eps for row in masses for m in row) / heads
    out["first_token_mass"] = sum(map(sum, masses)) / heads
    out["sparsity"] = sum(map(sum, sparsity)) / heads
    out["max_abs"] = max(l.hidden.max_abs for l in layers)
    out["kurtosis"] = max(l.hidden.kurtosis for l in layers)
    return out


def merge_heads(layers: list[LayerStats], group=None, device: torch.device | str = "cpu") -> list[LayerStats]:
    """Under tensor parallel: every rank of ``group`` gets every head's attention sums (all-gather
    along heads, in rank order, through ``device``: the backend's); the hidden state is replicated
    there, so its moments are kept."""
    import torch.distributed as dist

    if group is None or dist.get_world_size(group) == 1:
        return layers
    world = dist.get_world_size(group)
    local = torch.stack([torch.cat([l.mass, l.zeros.double()]) for l in layers]).to(device)  # [L, 2 H_local]
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local, group=group)
    H = layers[0].mass.numel()
    for i, layer in enumerate(layers):
        layer.mass = torch.cat([g[i, :H] for g in gathered]).cpu()
        layer.zeros = torch.cat([g[i, H:] for g in gathered]).long().cpu()
    return layers
