"""Attention sinks: how much attention each head puts on the first token (Gu et al. 2024).

For layer l and head h, ``mass[l][h]`` is the attention weight on each sample's first real token,
averaged over every real query of every sample (sums and counts are accumulated over batches and
divided once, so the batch size does not matter; the authors' script divides the sum of per-batch
means by the number of samples). A head is a sink head when ``mass > eps``; the sink rate is the
share of sink heads over all (layer, head), as a percentage.
"""

from __future__ import annotations

import torch
from torch import nn

from softpick.analysis.collect import run_pass
from softpick.analysis.data import Batch
from softpick.analysis.masks import first_positions, valid_positions

DEFAULT_SINK_EPS = 0.3


class SinkObserver:
    """Accumulates, per layer and head, the attention on the first token and the number of queries."""

    def __init__(self, eps: float = DEFAULT_SINK_EPS):
        if not 0.0 < eps < 1.0:
            raise ValueError(f"sink eps must be in (0, 1), got {eps}.")
        self.eps = eps
        self.mass: dict[int, torch.Tensor] = {}  # layer -> [H] float64 sum over queries
        self.queries: dict[int, int] = {}  # layer -> number of real queries

    def on_attention(self, layer: int, weights: torch.Tensor, batch: Batch) -> None:
        B, H, T, _ = weights.shape  # [B, H, T, T]
        first = first_positions(batch).view(B, 1, 1, 1).expand(B, H, T, 1)
        on_first = weights.gather(-1, first).squeeze(-1).double()  # [B, H, T]
        valid = valid_positions(batch)[:, None, :]  # [B, 1, T]
        total = (on_first * valid).sum(dim=(0, 2)).cpu()  # [H]
        self.mass[layer] = self.mass.get(layer, 0) + total
        self.queries[layer] = self.queries.get(layer, 0) + int(valid.sum())

    def result(self) -> dict:
        layers = sorted(self.mass)
        mass = [(self.mass[l] / self.queries[l]).tolist() for l in layers]  # [L][H]
        sink = [[m > self.eps for m in row] for row in mass]
        heads = sum(len(row) for row in sink)
        return {
            "eps": self.eps,
            "sink_rate": 100.0 * sum(map(sum, sink)) / heads,
            "sink_rate_per_layer": [100.0 * sum(row) / len(row) for row in sink],
            "first_token_mass": sum(map(sum, mass)) / heads,
            "first_token_mass_per_layer": [sum(row) / len(row) for row in mass],
            "first_token_mass_per_head": mass,
            "queries_per_layer": self.queries[layers[0]] if layers else 0,
        }


def compute_sink_rate(model: nn.Module, batches: list[Batch], eps: float = DEFAULT_SINK_EPS) -> dict:
    """Sink rate (percent of (layer, head) with first-token mass > eps) and first-token masses.

    Returns a dict: ``sink_rate`` (%), ``sink_rate_per_layer`` [L] (%), ``first_token_mass`` (mean over
    all heads), ``first_token_mass_per_layer`` [L], ``first_token_mass_per_head`` [L][H], ``eps``.
    """
    observer = SinkObserver(eps)
    run_pass(model, batches, [observer])
    return observer.result()
