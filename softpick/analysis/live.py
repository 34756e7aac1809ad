"""Plots of the live analysis metrics (``--metrics.analysis_freq``) over training, one line per run.

A training dump's ``metrics.jsonl`` carries, at every N-th step, ``analysis/NAME`` (over all layers)
and ``analysis/NAME/layer_l`` for NAME in :data:`softpick.models.probes.LIVE_METRICS`. ``softpick
experiment`` plots them for every variant, ``softpick compare`` for every report whose model folder
sits in a training dump (``DUMP/hf`` beside ``DUMP/metrics.jsonl``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from softpick.models.probes import LIVE_METRICS

PREFIX = "analysis/"
TITLES = {
    "sink_rate": "sink rate (% of heads, first-token mass > 0.3)",
    "first_token_mass": "first-token attention (mean over heads)",
    "sparsity": "attention sparsity (% of weights <= 1e-5)",
    "max_abs": "max |activation| (max over layers)",
    "kurtosis": "hidden-state kurtosis (max over layers)",
}


def read_rows(path: Path) -> list[dict]:
    """metrics.jsonl rows by step (a resumed run logs some steps again: the last row wins)."""
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]


def live_rows(rows: list[dict]) -> list[dict]:
    """The rows that carry live analysis metrics."""
    return [r for r in rows if f"{PREFIX}sink_rate" in r]


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_live_metrics(runs: dict[str, list[dict]], out: str | Path) -> list[str]:
    """``live_metrics.png`` (one panel per metric, one line per run) and ``live_metrics_layers.png``
    (one row per metric, one column per run, one line per layer) in ``out``; the file names written
    (none when no run has live metrics)."""
    runs = {name: live_rows(rows) for name, rows in runs.items()}
    runs = {name: rows for name, rows in runs.items() if rows}
    if not runs:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig, grid = plt.subplots(2, 3, figsize=(13, 7))
    axes = list(grid.flat)
    for ax, metric in zip(axes, LIVE_METRICS):
        for name, rows in runs.items():
            ax.plot(*_series(rows, PREFIX + metric), label=name, marker=".", markersize=3)
        ax.set_title(TITLES[metric], fontsize=9)
        ax.set_xlabel("step")
        if metric in ("max_abs", "kurtosis"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    axes[-1].axis("off")
    axes[-1].legend(handles, labels, loc="center", fontsize=9, title="run")
    fig.tight_layout()
    fig.savefig(out / "live_metrics.png", dpi=110)
    plt.close(fig)

    names = list(runs)
    fig, axes = plt.subplots(len(LIVE_METRICS), len(names), figsize=(3.4 * len(names), 2.4 * len(LIVE_METRICS)),
                             squeeze=False, sharey="row")
    for col, name in enumerate(names):
        rows = runs[name]
        layers = sorted({int(k.rsplit("_", 1)[1]) for k in rows[-1] if k.startswith(PREFIX) and "/layer_" in k})
        for row, metric in enumerate(LIVE_METRICS):
            ax = axes[row][col]
            for layer in layers:
                ax.plot(*_series(rows, f"{PREFIX}{metric}/layer_{layer}"), label=f"layer {layer}",
                        color=plt.cm.viridis(layer / max(1, len(layers) - 1)))
            if row == 0:
                ax.set_title(name, fontsize=9)
            if col == 0:
                ax.set_ylabel(metric, fontsize=8)
            if metric in ("max_abs", "kurtosis") and all(
                    v > 0 and math.isfinite(v) for l in layers for v in _series(rows, f"{PREFIX}{metric}/layer_{l}")[1]):
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
        axes[-1][col].set_xlabel("step")
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "live_metrics_layers.png", dpi=100)
    plt.close(fig)
    return ["live_metrics.png", "live_metrics_layers.png"]


def training_rows(model_path: str | Path) -> list[dict]:
    """The metrics.jsonl rows of the training dump a model folder was exported into (DUMP/hf), else []."""
    return read_rows(Path(model_path).parent / "metrics.jsonl")
