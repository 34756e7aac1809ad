"""Massive activations: kurtosis and extreme values of each decoder layer's output hidden state.

The hidden state of layer l is the residual stream the layer returns, [B, T, D], before any final
norm. Over all its elements x at real (non-pad) positions of all samples:

- ``kurtosis`` is Pearson's (non-excess) kurtosis E[(x - mu)^4] / sigma^4 (3 for a Gaussian), as in
  the massive-activation literature and the softpick paper; ``excess_kurtosis`` = kurtosis - 3.
  Power sums are accumulated in float64 around a shift (the first batch's mean), so the result does
  not depend on batching beyond float rounding (:class:`softpick.models.probes.Moments`, shared with
  the live metrics of training).
- ``max_abs``, ``min``, ``max``: the extreme values;
- ``top``: the k largest |x| with their sample, position, channel and token;
- ``max_to_median``: max |x| / median |x|. The median comes from a histogram of log10 |x| with
  bins 0.005 decades wide, so it is exact to within about 0.6%.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from softpick.errors import BadValue
from softpick.analysis.collect import run_pass
from softpick.analysis.data import Batch
from softpick.analysis.masks import valid_positions
from softpick.models.probes import Moments

LOG10_RANGE = (-12.0, 8.0)
LOG10_BINS = 4000


class ActivationObserver:
    """Per layer: float64 power sums, extremes, a log-magnitude histogram and a running top-k."""

    def __init__(self, top_k: int = 10):
        if top_k < 1:
            raise BadValue(f"top_k must be >= 1, got {top_k}.")
        self.top_k = top_k
        self.stats: dict[int, dict] = {}

    def on_hidden(self, layer: int, hidden: torch.Tensor, batch: Batch) -> None:
        valid = valid_positions(batch)  # [B, T]
        x = hidden[valid]  # [N, D]
        st = self.stats.get(layer)
        if st is None:
            st = self.stats[layer] = {
                "moments": Moments(),
                "hist": torch.zeros(LOG10_BINS, dtype=torch.float64),
                "top": [],
            }
        st["moments"].add(x)
        logmag = x.double().abs().clamp(min=10.0 ** LOG10_RANGE[0]).log10().float()
        st["hist"] += torch.histc(logmag, LOG10_BINS, *LOG10_RANGE).double().cpu()
        self._update_top(st, hidden, valid, batch)

    def _update_top(self, st: dict, hidden: torch.Tensor, valid: torch.Tensor, batch: Batch) -> None:
        B, T, D = hidden.shape
        mag = hidden.detach().float().abs().masked_fill(~valid[:, :, None], -1.0).flatten()
        values, index = mag.topk(min(self.top_k, mag.numel()))
        for value, flat in zip(values.tolist(), index.tolist()):
            if value < 0:
                break
            b, rest = divmod(flat, T * D)
            t, c = divmod(rest, D)
            first = int(valid[b].int().argmax())
            st["top"].append(
                {
                    "value": float(hidden[b, t, c]),
                    "sample": batch.offset + b,
                    "position": t - first,
                    "channel": c,
                    "token_id": int(batch.input_ids[b, t]),
                }
            )
        st["top"] = sorted(st["top"], key=lambda e: -abs(e["value"]))[: self.top_k]

    def result(self, tokenizer=None) -> dict:
        layers = sorted(self.stats)
        per_layer = []
        for l in layers:
            st = self.stats[l]
            moments = st["moments"]
            mean, m2, _ = moments.central
            kurt = moments.kurtosis
            max_abs = moments.max_abs
            median = _histogram_median(st["hist"], moments.n)
            top = [dict(e) for e in st["top"]]
            if tokenizer is not None:
                for e in top:
                    e["token"] = tokenizer.decode([e["token_id"]])
            per_layer.append(
                {
                    "layer": l,
                    "kurtosis": kurt,
                    "excess_kurtosis": kurt - 3.0,
                    "mean": mean,
                    "std": math.sqrt(max(m2, 0.0)),
                    "min": moments.min,
                    "max": moments.max,
                    "max_abs": max_abs,
                    "median_abs": median,
                    "max_to_median": max_abs / median if median > 0 else float("inf"),
                    "top": top,
                }
            )
        return {
            "kurtosis_definition": "Pearson (non-excess): E[(x-mu)^4]/sigma^4 over all elements of the layer output",
            "kurtosis_per_layer": [p["kurtosis"] for p in per_layer],
            "max_kurtosis": max((p["kurtosis"] for p in per_layer), default=float("nan")),
            "max_abs_per_layer": [p["max_abs"] for p in per_layer],
            "max_abs": max((p["max_abs"] for p in per_layer), default=float("nan")),
            "max_to_median_per_layer": [p["max_to_median"] for p in per_layer],
            "layers": per_layer,
        }


def _histogram_median(hist: torch.Tensor, n: int) -> float:
    """Geometric centre of the bin where the cumulative count of |x| passes n / 2."""
    index = int(torch.searchsorted(hist.cumsum(0), torch.tensor(n / 2.0, dtype=torch.float64)))
    lo, hi = LOG10_RANGE
    width = (hi - lo) / LOG10_BINS
    return 10.0 ** (lo + (index + 0.5) * width)


def compute_activation_stats(model: nn.Module, batches: list[Batch], top_k: int = 10, tokenizer=None) -> dict:
    """Kurtosis, extremes, top-k activations and max/median ratio of every layer's output.

    Returns a dict with ``kurtosis_per_layer`` [L], ``max_kurtosis``, ``max_abs_per_layer`` [L],
    ``max_abs``, ``max_to_median_per_layer`` [L] and ``layers``: one dict per layer with kurtosis,
    excess_kurtosis, mean, std, min, max, max_abs, median_abs, max_to_median and ``top`` (value, sample,
    position from the sample's first token, channel, token_id and, given a tokenizer, token).
    """
    observer = ActivationObserver(top_k)
    run_pass(model, batches, [observer])
    return observer.result(tokenizer)
