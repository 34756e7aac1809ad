"""Attention sinks: how much attention each head puts on the first token (Gu et al. 2024).

For layer l and head h, ``mass[l][h]`` is the attention weight on each sample's first real token,
averaged over every real query of every sample (sums and counts are accumulated over batches and
divided once, so the batch size does not matter; the authors' script divides the sum of per-batch
means by the number of samples). A head is a sink head when ``mass > eps``; the sink rate is the
share of sink heads over all (layer, head), as a percentage. The first-token mass is computed by
:func:`softpick.models.probes.first_token_mass`, shared with the live metrics of training.

Sinks also form on tokens other than the first (delimiters, a BOS inside packed text). For every
head the observer also sums the attention that keys of each token id receive, leaving out each
sample's first position, over the same real queries: ``token_mass[l][h][v]`` is the mean weight a
query puts on tokens of id v. A head whose largest such mass exceeds eps is an other-token sink head
(a frequent token shares attention in proportion to its count, far below 0.3; a previous-token head
spreads its attention over every id).

Sigmoid attention (attn_type "sigmoid") has no normaliser: its weights sigmoid(s - ln n) are read as
they are, so ``mass`` is the mean weight on the first token and a sink head is one whose first-token
weight exceeds eps, the same threshold on a number that is no longer a share of the row.
"""

from __future__ import annotations

import torch
from torch import nn

from softpick.errors import BadValue
from softpick.analysis.collect import run_pass
from softpick.analysis.data import Batch
from softpick.analysis.masks import first_positions, valid_positions
from softpick.models.probes import DEFAULT_SINK_EPS, first_token_mass

__all__ = ["DEFAULT_SINK_EPS", "SinkObserver", "compute_sink_rate"]


class SinkObserver:
    """Accumulates, per layer and head, the attention on the first token and the number of queries."""

    def __init__(self, eps: float = DEFAULT_SINK_EPS):
        if not 0.0 < eps < 1.0:
            raise BadValue(f"sink eps must be in (0, 1), got {eps}.")
        self.eps = eps
        self.mass: dict[int, torch.Tensor] = {}  # layer -> [H] float64 sum over queries
        self.token_mass: dict[int, torch.Tensor] = {}  # layer -> [H, V] float64 sum over queries, per key token id
        self.queries: dict[int, int] = {}  # layer -> number of real queries

    def on_attention(self, layer: int, weights: torch.Tensor, batch: Batch) -> None:
        B, H, T, _ = weights.shape  # [B, H, T, T]
        total, queries = first_token_mass(weights, batch.attention_mask)  # [H], the shared definition
        self.mass[layer] = self.mass.get(layer, 0) + total.cpu()
        self.queries[layer] = self.queries.get(layer, 0) + queries
        valid = valid_positions(batch)[:, None, :]  # [B, 1, T]
        # attention each key receives from the real queries, first positions and padding left out
        keys = valid_positions(batch).clone()  # [B, T]
        keys[torch.arange(B, device=keys.device), first_positions(batch)] = False
        received = (weights.double() * valid[..., None]).sum(dim=2) * keys[:, None, :]  # [B, H, T]
        ids = batch.input_ids.to(received.device)  # [B, T]
        per_id = received.new_zeros(H, int(ids.max()) + 1)
        per_id.scatter_add_(1, ids[:, None, :].expand(B, H, T).transpose(0, 1).reshape(H, B * T),
                            received.transpose(0, 1).reshape(H, B * T))
        self.token_mass[layer] = _add_padded(self.token_mass.get(layer), per_id.cpu())

    def result(self, tokenizer=None) -> dict:
        """The measurements; with a tokenizer, other-token sinks also name their token."""
        layers = sorted(self.mass)
        mass = [(self.mass[l] / self.queries[l]).tolist() for l in layers]  # [L][H]
        sink = [[m > self.eps for m in row] for row in mass]
        heads = sum(len(row) for row in sink)
        top_mass, top_ids = zip(*[(self.token_mass[l] / self.queries[l]).max(dim=1) for l in layers]) if layers else ((), ())
        token_sinks = sorted(
            ({"layer": l, "head": h, "token_id": int(top_ids[i][h]), "mass": float(top_mass[i][h])}
             for i, l in enumerate(layers) for h in range(len(top_mass[i])) if top_mass[i][h] > self.eps),
            key=lambda e: -e["mass"])
        if tokenizer is not None:
            for entry in token_sinks:
                entry["token"] = tokenizer.decode([entry["token_id"]])
        return {
            "other_token_sink_rate": 100.0 * len(token_sinks) / heads if heads else 0.0,
            "other_token_mass_per_layer": [float(m.max()) for m in top_mass],
            "other_token_sinks": token_sinks[:20],
            "eps": self.eps,
            "sink_rate": 100.0 * sum(map(sum, sink)) / heads,
            "sink_rate_per_layer": [100.0 * sum(row) / len(row) for row in sink],
            "first_token_mass": sum(map(sum, mass)) / heads,
            "first_token_mass_per_layer": [sum(row) / len(row) for row in mass],
            "first_token_mass_per_head": mass,
            "queries_per_layer": self.queries[layers[0]] if layers else 0,
        }


def _add_padded(total: torch.Tensor | None, part: torch.Tensor) -> torch.Tensor:
    """total + part over the token-id axis, the shorter one padded with zeros."""
    if total is None:
        return part
    width = max(total.shape[1], part.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
    return pad(total) + pad(part)


def compute_sink_rate(model: nn.Module, batches: list[Batch], eps: float = DEFAULT_SINK_EPS) -> dict:
    """Sink rate (percent of (layer, head) with first-token mass > eps) and first-token masses.

    Returns a dict: ``sink_rate`` (%), ``sink_rate_per_layer`` [L] (%), ``first_token_mass`` (mean over
    all heads), ``first_token_mass_per_layer`` [L], ``first_token_mass_per_head`` [L][H], ``eps``;
    ``other_token_sink_rate`` (% of heads whose largest mass on one token id, first positions left
    out, exceeds eps), ``other_token_mass_per_layer`` [L] (that largest mass, max over heads) and
    ``other_token_sinks`` (up to 20 heads above eps: layer, head, token_id, mass).
    """
    observer = SinkObserver(eps)
    run_pass(model, batches, [observer])
    return observer.result()
