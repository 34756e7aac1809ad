"""Attention-map sparsity: the share of causal attention entries that are (numerically) zero.

Counted over every entry with key <= query (diagonal included) where both positions are real
tokens; an entry is zero when its weight is <= ``threshold`` (default 1e-5, the authors' value).
Sums are accumulated over batches, so padding and batch size do not change the result. Softmax in
float16/bfloat16 also produces "zeros" by underflow: compare models at the same dtype. The count is
:func:`softpick.models.probes.zero_entries`, shared with the live metrics of training. Sigmoid attention
(unnormalised, never exactly 0) is counted the same way: weights at or below the threshold.
"""

from __future__ import annotations

import torch
from torch import nn

from softpick.errors import BadValue
from softpick.analysis.collect import run_pass
from softpick.analysis.data import Batch
from softpick.models.probes import DEFAULT_ZERO_THRESHOLD, zero_entries

__all__ = ["DEFAULT_ZERO_THRESHOLD", "SparsityObserver", "compute_sparsity"]


class SparsityObserver:
    """Per layer and head: number of zero entries; per layer: number of counted entries per head."""

    def __init__(self, threshold: float = DEFAULT_ZERO_THRESHOLD):
        if threshold < 0:
            raise BadValue(f"sparsity threshold must be >= 0, got {threshold}.")
        self.threshold = threshold
        self.zeros: dict[int, torch.Tensor] = {}  # layer -> [H] long
        self.entries: dict[int, int] = {}  # layer -> counted entries per head

    def on_attention(self, layer: int, weights: torch.Tensor, batch: Batch) -> None:
        zeros, entries = zero_entries(weights, batch.attention_mask, self.threshold)  # [H], the shared definition
        self.zeros[layer] = self.zeros.get(layer, 0) + zeros.cpu()
        self.entries[layer] = self.entries.get(layer, 0) + entries

    def result(self) -> dict:
        layers = sorted(self.zeros)
        per_head = [(100.0 * self.zeros[l].double() / self.entries[l]).tolist() for l in layers]
        zeros = sum(int(self.zeros[l].sum()) for l in layers)
        total = sum(self.entries[l] * len(self.zeros[l]) for l in layers)
        return {
            "threshold": self.threshold,
            "sparsity": 100.0 * zeros / total,
            "sparsity_per_layer": [sum(row) / len(row) for row in per_head],
            "sparsity_per_head": per_head,
        }


def compute_sparsity(model: nn.Module, batches: list[Batch], threshold: float = DEFAULT_ZERO_THRESHOLD) -> dict:
    """Percent of causal, non-pad attention entries <= ``threshold``.

    Returns a dict: ``sparsity`` (% over all layers and heads), ``sparsity_per_layer`` [L] (%),
    ``sparsity_per_head`` [L][H] (%), ``threshold``.
    """
    observer = SparsityObserver(threshold)
    run_pass(model, batches, [observer])
    return observer.result()
