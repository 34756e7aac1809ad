"""Does bf16 attention change softpick training? Four runs on one CPU core, then figures and numbers.

    python experiments/cpu_precision/run.py [--steps 1000] [--only softpick_bf16,...] [--plots-only]

Each variant of configs/experiments/cpu_precision.toml (softpick, softmax) trains twice with the same
seed, data order and options: ``bf16`` under bf16 autocast, the attention op reading the bf16 q, k, v (on
the CPU the naive op: its score and output matmuls run in bf16 under autocast, its softpick in fp32; it
stands for the bf16 kernels of the GPU), and ``fp32attn`` under the same autocast with exact fp32
attention (q, k, v upcast, the naive op with autocast off, o cast back). The trainer itself runs bf16
autocast only on CUDA; here its ``_autocast`` is bf16 on the CPU too. Live analysis every
``metrics.analysis_freq`` steps; ``softpick analyze`` on each export (fp32) at the end.

Writes OUT/NAME/train (dump), OUT/NAME/analysis, OUT/results.json and the figures
OUT/precision_loss.png, OUT/precision_grad_norm.png, OUT/live_metrics*.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from grad_fidelity import fp32_attention  # noqa: E402

from softpick.analysis.live import plot_live_metrics, read_rows  # noqa: E402
from softpick.experiment import load_experiment, train_sections  # noqa: E402
from softpick.train.config import from_dict  # noqa: E402
from softpick.train.trainer import Trainer  # noqa: E402

PRECISIONS = ("bf16", "fp32attn", "fp32")
"""bf16 autocast with the attention reading bf16 q, k, v; the same with exact fp32 attention; no autocast."""


class CpuBf16Trainer(Trainer):
    """The trainer with bf16 autocast on the CPU (as the trainer runs on CUDA)."""

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


def run_name(variant: str, precision: str, seed: int) -> str:
    return f"{variant}_{precision}" + (f"_seed{seed}" if seed else "")


def parse(name: str) -> tuple[str, str, int]:
    """(variant, precision, seed) of a run name."""
    parts = name.split("_")
    seed = int(parts.pop()[4:]) if parts[-1].startswith("seed") else 0
    return "_".join(parts[:-1]), parts[-1], seed


def train(config: dict, variant: str, precision: str, out: Path, steps: int | None, seed: int = 0) -> float:
    folder = out / run_name(variant, precision, seed)
    shutil.rmtree(folder / "train", ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    model_config = folder / "model_config.json"
    model_config.write_text(json.dumps({**config["model"], **config["variants"][variant]}, indent=2) + "\n")
    sections = train_sections(config, model_config, folder / "train")
    sections["checkpoint"]["enable_checkpoint"] = False
    if steps is not None:
        sections["training"]["steps"] = steps
    sections["training"]["seed"] = seed
    trainer = (Trainer if precision == "fp32" else CpuBf16Trainer)(from_dict(sections, "cpu_precision"))
    start = time.perf_counter()
    try:
        with fp32_attention() if precision == "fp32attn" else contextlib.nullcontext():
            trainer.train()
    finally:
        trainer.close()
    return time.perf_counter() - start


def smooth(values: list[float], window: int) -> list[float]:
    return [statistics.fmean(values[max(0, i - window + 1): i + 1]) for i in range(len(values))]


def figures(out: Path, runs: dict[str, list[dict]]) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"softpick": "tab:red", "softmax": "tab:blue"}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    seeds = sorted({parse(name)[2] for name in runs})
    for name, rows in runs.items():
        variant, precision, seed = parse(name)
        if seed:
            continue
        style = {"bf16": "-", "fp32attn": "--", "fp32": ":"}[precision]
        steps, loss = [r["step"] for r in rows], [r["loss"] for r in rows]
        ax.plot(steps, smooth(loss, 25), style, color=colors[variant], label=name)
    for variant in colors:
        for seed in seeds:
            for other, ls in (("fp32attn", "-" if not seed else "--"), ("fp32", ":" if not seed else "-.")):
                a, b = runs.get(run_name(variant, "bf16", seed)), runs.get(run_name(variant, other, seed))
                if a and b:
                    n = min(len(a), len(b))
                    diff = [a[i]["loss"] - b[i]["loss"] for i in range(n)]
                    bx.plot([a[i]["step"] for i in range(n)], smooth(diff, 25), color=colors[variant], ls=ls,
                            label=f"{variant}" + (f" seed {seed}" if seed else "") + f": bf16 - {other}")
        a, b = runs.get(run_name(variant, "bf16", 0)), runs.get(run_name(variant, "bf16", 1))
        if a and b:  # the yardstick: another seed (init and data order) at the same precision
            n = min(len(a), len(b))
            diff = [a[i]["loss"] - b[i]["loss"] for i in range(n)]
            bx.plot([a[i]["step"] for i in range(n)], smooth(diff, 25), color=colors[variant], alpha=0.35, lw=3,
                    label=f"{variant} bf16: seed 0 - seed 1 (yardstick)")
    ax.set(xlabel="step", ylabel="training loss (running mean of 25)", title="Loss", ylim=(None, None))
    ax.set_yscale("log")
    bx.axhline(0, color="k", lw=0.5)
    bx.set(xlabel="step", ylabel="loss difference (running mean of 25)", title="bf16 minus exact fp32 attention / fp32")
    for x in (ax, bx):
        x.grid(alpha=0.3)
        x.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "precision_loss.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, variant in zip(axes, colors):
        for precision, style in (("bf16", "-"), ("fp32attn", "--"), ("fp32", ":")):
            rows = runs.get(run_name(variant, precision, 0))
            if rows:
                ax.plot([r["step"] for r in rows], [r["grad_norm"] for r in rows], style, lw=0.7,
                        label=f"{variant}_{precision}")
        ax.set(xlabel="step", ylabel="grad norm (before clipping at 1.0)", title=variant, yscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "precision_grad_norm.png", dpi=110)
    plt.close(fig)
    plot_live_metrics({name: rows for name, rows in runs.items() if not parse(name)[2]}, out)
    return summary(runs)


def summary(runs: dict[str, list[dict]]) -> dict:
    """Per run: final loss (mean of the last 50 steps), grad-norm quantiles, jumps, last live metrics."""
    out = {}
    for name, rows in runs.items():
        norms = [r["grad_norm"] for r in rows]
        jumps = [norms[i] / norms[i - 1] for i in range(1, len(norms))]
        live = [r for r in rows if "analysis/sink_rate" in r]
        q = statistics.quantiles(norms, n=100)
        out[name] = {
            "final_loss": statistics.fmean(r["loss"] for r in rows[-50:]),
            "loss_at": {s: rows[s - 1]["loss"] for s in (100, 250, 500, 1000) if s <= len(rows)},
            "grad_norm_median": statistics.median(norms), "grad_norm_p99": q[98], "grad_norm_max": max(norms),
            "grad_norm_median_after_100": statistics.median(norms[100:]) if len(norms) > 100 else None,
            "jumps_over_3x": sum(j > 3 for j in jumps), "largest_jump": max(jumps) if jumps else None,
            "clipped_steps": sum(n > 1.0 for n in norms),
            "live_last": {k: v for k, v in live[-1].items() if k.startswith("analysis/") and "/layer_" not in k} if live else {},
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs/experiments/cpu_precision.toml"))
    p.add_argument("--out", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--only", default=None, help="comma-separated runs VARIANT_PRECISION to train")
    p.add_argument("--precisions", default="bf16,fp32attn", help=f"comma-separated, of {', '.join(PRECISIONS)}")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (init and data order) to train")
    p.add_argument("--plots-only", action="store_true", help="no training or analysis: figures from the dumps")
    p.add_argument("--no-analyze", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    config = load_experiment(args.config)
    out = Path(args.out or config["experiment"]["out"])
    seeds = [int(x) for x in args.seeds.split(",")]
    precisions = args.precisions.split(",")
    names = [run_name(v, p, s) for s in seeds for v in config["experiment"]["variants"] for p in precisions
             if not (v == "softmax" and p == "fp32attn" and "fp32" in precisions)]
    every = sorted({path.parent.parent.name for path in out.glob("*/train/metrics.jsonl")})
    timing_path = out / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    if not args.plots_only:
        for name in [run_name(*n.split("_"), s) for s in seeds for n in args.only.split(",")] if args.only else names:
            variant, precision, seed = parse(name)
            print(f"[{name}] training", flush=True)
            timing[name] = {"train_s": train(config, variant, precision, out, args.steps, seed)}
            timing_path.write_text(json.dumps(timing, indent=2) + "\n")
            if not args.no_analyze:
                from softpick.analysis.cli import analyze, analyze_options

                dump = out / name / "train"
                start = time.perf_counter()
                analyze(dump / "hf", analyze_options(dump / "hf", out / name / "analysis", **config.get("analyze", {})))
                timing[name]["analysis_s"] = time.perf_counter() - start
                timing_path.write_text(json.dumps(timing, indent=2) + "\n")
    runs = {name: read_rows(out / name / "train" / "metrics.jsonl") for name in sorted(set(names) | set(every))}
    runs = {name: rows for name, rows in runs.items() if rows}
    result = {"summary": figures(out, runs), "timing": timing}
    for name in runs:
        report = out / name / "analysis" / "report.json"
        if report.is_file():
            from softpick.analysis.report import Report

            result["summary"][name]["analysis"] = Report.load(report.parent).headline()
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
