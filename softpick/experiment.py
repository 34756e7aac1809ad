"""``softpick experiment``: train softmax and softpick (and other variants) alike, analyse, compare.

Usage::

    softpick experiment configs/experiments/cpu_small.toml                       # minutes on a CPU
    softpick experiment configs/experiments/gpu_100m.toml --set train.training.dataset=data/prose \\
        --set train.model.tokenizer_path=data/prose/tokenizer

An experiment file has four tables (see configs/experiments/)::

    [experiment]  name, out (output folder), nproc (processes per training run; > 1 launches
                  train.sh under torchrun), variants (names, in order)
    [model]       the model config json shared by every variant
    [variants.NAME]  what a variant changes in [model], e.g. attn_type = "softmax"
    [train]       ``softpick train`` options as nested tables: [train.training] steps = 300 ...
    [analyze]     ``softpick analyze`` options: num_samples = 100, seq_len = 256 ... (dashes as _)

Every variant trains with the same data, seed, budget and options (only [variants.NAME] differs),
then ``softpick analyze`` runs on its Hugging Face export, and ``softpick compare`` puts the reports
side by side. ``OUT/README.md`` gives the command, commit, device, timings, a summary table with
the learning curves (``OUT/learning_curves.png``), and the paper's claims checked against the numbers.
``--reuse`` keeps the variants whose export and report already exist and resumes a variant's training
from its last checkpoint (an interrupted run goes on where it stopped). ``--only NAME`` trains and
analyses the named variants and writes no comparison. ``--parallel N`` runs up to N variants at a time,
each in its own process (``softpick experiment ... --only NAME``, log in ``OUT/NAME/experiment.log``)
on its own ``nproc`` GPUs (``CUDA_VISIBLE_DEVICES``; torchrun gets ``MASTER_PORT`` + slot), then
compares them: on a node with 8 GPUs, 8 one-GPU variants train side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from softpick.errors import BadValue, MissingFile, Unavailable

if TYPE_CHECKING:
    from softpick.analysis.report import Report

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _set(config: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` to the nested dict (value parsed as TOML, else kept as a string)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise BadValue(f"--set takes KEY=VALUE with a dotted KEY, got {assignment!r}.")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    *path, last = key.split(".")
    node = config
    for part in path:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise BadValue(f"--set {key}: {part!r} is not a table.")
    node[last] = value


def load_experiment(path: str | Path, assignments: list[str] = ()) -> dict:
    """The experiment table with defaults filled in, --set applied and checked."""
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"experiment file {path} does not exist.")
    try:
        config = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise BadValue(f"{path} is not valid TOML ({error}).") from None
    for assignment in assignments:
        _set(config, assignment)
    unknown = set(config) - {"experiment", "model", "variants", "train", "analyze"}
    if unknown:
        raise BadValue(f"{path}: unknown tables {sorted(unknown)}; expected experiment, model, variants, train, analyze.")
    exp = config.setdefault("experiment", {})
    exp.setdefault("name", path.stem)
    exp.setdefault("out", f"experiments/{exp['name']}")
    exp.setdefault("nproc", 1)
    variants = config.setdefault("variants", {})
    if not variants:
        variants.update({"softpick": {"attn_type": "softpick"}, "softmax": {"attn_type": "softmax"}})
    exp.setdefault("variants", list(variants))
    missing = [name for name in exp["variants"] if name not in variants]
    if missing:
        raise BadValue(f"{path}: experiment.variants names {missing} without a [variants.NAME] table.")
    if len(exp["variants"]) < 2:
        raise BadValue(f"{path}: an experiment compares at least two variants, got {exp['variants']}.")
    if "model_type" not in config.get("model", {}):
        raise BadValue(f"{path}: [model] needs model_type (e.g. \"softpick_transformer\").")
    return config


def train_sections(config: dict, model_config: Path, dump: Path) -> dict[str, dict[str, Any]]:
    """The trainer's config tables ({section: {key: value}}, as :func:`softpick.train.config.from_dict`
    takes them): [train] of the experiment file, plus the variant's model config, its dump folder and
    checkpoints on (so that --reuse can resume)."""
    sections: dict[str, dict[str, Any]] = {}
    for section, options in config.get("train", {}).items():
        if not isinstance(options, dict):
            raise BadValue(f"[train] holds tables like [train.training]; got a plain value for {section!r}.")
        sections[section] = dict(options)
    sections.setdefault("model", {})["config"] = str(model_config)
    sections.setdefault("job", {})["dump_folder"] = str(dump)
    sections.setdefault("checkpoint", {})["enable_checkpoint"] = True
    return sections


def run_training(config: dict, sections: dict[str, dict[str, Any]], log: Path) -> float:
    """Train one variant (in this process, or under torchrun when nproc > 1); returns seconds."""
    from softpick.train.config import from_dict, to_argv

    start = time.perf_counter()
    nproc = int(config["experiment"]["nproc"])
    if nproc > 1:
        env = {**os.environ, "NGPU": str(nproc)}
        with open(log, "w") as f:
            proc = subprocess.run(["bash", str(ROOT / "train.sh"), *to_argv(sections)], stdout=f,
                                  stderr=subprocess.STDOUT, env=env)
        if proc.returncode != 0:
            raise Unavailable(f"training failed (exit {proc.returncode}); see {log}.")
    else:
        from softpick.train.trainer import Trainer

        trainer = Trainer(from_dict(sections, "the experiment's [train] tables"))
        try:
            trainer.train()
        finally:
            trainer.close()
    return time.perf_counter() - start


def read_metrics(dump: Path) -> list[dict]:
    """The logged rows by step; a resumed run logs again the steps after its checkpoint: the last row wins."""
    path = dump / "metrics.jsonl"
    if not path.is_file():
        return []
    from softpick.analysis.live import read_rows

    return read_rows(path)


def plot_learning_curves(curves: dict[str, list[dict]], path: Path) -> None:
    """Training loss against tokens seen, one line per variant (a running mean over 5% of the steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in curves.items():
        if not rows:
            continue
        window = max(1, len(rows) // 20)
        losses = [r["loss"] for r in rows]
        smooth = [statistics.fmean(losses[max(0, i - window + 1): i + 1]) for i in range(len(losses))]
        ax.plot([r["tokens"] / 1e6 for r in rows], smooth, label=name)
    ax.set_xlabel("tokens seen (M)")
    ax.set_ylabel("training loss (running mean)")
    ax.set_title("Learning curves")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _final(rows: list[dict], n: int = 10) -> float | None:
    return statistics.fmean(r["loss"] for r in rows[-n:]) if rows else None


def write_summary(config: dict, out: Path, results: dict[str, dict], reports: dict[str, Report], argv: list[str]) -> Path:
    from softpick.analysis.claims import claims
    from softpick.analysis.report import Report

    commit = os.environ.get("SOFTPICK_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip() or "unknown"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'x86-64'})"
    exp = config["experiment"]
    lines = [f"# Experiment `{exp['name']}`", "", exp.get("description", "").strip(), "",
             f"- command: `softpick experiment {shlex.join(argv)}`",
             f"- commit {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, device {device}, "
             f"{exp['nproc']} process(es) per run, torch {torch.__version__}",
             "- variants: " + ", ".join(f"{n} ({json.dumps(config['variants'][n])})" for n in exp["variants"]), "",
             "| variant | parameters | tokens | train s | analysis s | final train loss | "
             + " | ".join(Report().headline()) + " |",
             "|---" * (6 + len(Report().headline())) + "|"]
    for name in exp["variants"]:
        r, rep = results[name], reports[name]
        values = ["n/a" if v is None else f"{v:.4g}" for v in rep.headline().values()]
        params = rep.model.get("parameters")
        lines.append(f"| {name} | {params or 'n/a'} | {r['tokens']} | {r['train_s']:.0f} | {r['analysis_s']:.0f} | "
                     f"{r['final_loss']:.4f} | " + " | ".join(values) + " |")
    found = claims(reports)
    if found:
        lines += ["", "## The paper's claims at this scale", ""] + [f"- {c}" for c in found]
    lines += ["", "![learning curves](learning_curves.png)", ""]
    if (out / "live_metrics.png").is_file():
        lines += ["The paper's metrics during training (`--metrics.analysis_freq`), all layers and per layer:", "",
                  "![live metrics](live_metrics.png)", "", "![live metrics per layer](live_metrics_layers.png)", ""]
    lines += [
              "Per-layer tables and plots of every metric: [comparison/comparison.md](comparison/comparison.md); "
              "each variant's own report: `VARIANT/analysis/report.md`.", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


def _save_timing(folder: Path, **seconds: float) -> None:
    """Record a variant's train_s / analysis_s in FOLDER/timing.json as soon as they are known, so that
    ``--reuse`` after an interruption (or the comparison after ``--parallel``) reports them."""
    path = folder / "timing.json"
    timing = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**timing, **seconds}, indent=2) + "\n")


def _load_timing(folder: Path) -> dict[str, float]:
    """FOLDER/timing.json, else the variant's row of an older run's OUT/results.json, else {}."""
    for path, key in ((folder / "timing.json", None), (folder.parent / "results.json", folder.name)):
        if path.is_file():
            data = json.loads(path.read_text())
            return data if key is None else data.get(key, {})
    return {}


def run(config: dict, argv: list[str], reuse: bool = False, only: list[str] | None = None) -> Path | None:
    """Train, analyse and compare every variant (or train and analyse only ``only``, without a
    comparison); returns the summary path (None with ``only``)."""
    from softpick.analysis.cli import analyze, analyze_options
    from softpick.analysis.live import plot_live_metrics
    from softpick.analysis.report import Report, write_comparison
    from softpick.train.config import to_argv

    exp = config["experiment"]
    out = Path(exp["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps(config, indent=2) + "\n")
    results, reports, curves = {}, {}, {}
    for name in only or exp["variants"]:
        folder = out / name
        folder.mkdir(exist_ok=True)
        if not reuse:
            (folder / "timing.json").unlink(missing_ok=True)
        previous = _load_timing(folder)
        model_config = folder / "model_config.json"
        model_config.write_text(json.dumps({**config["model"], **config["variants"][name]}, indent=2) + "\n")
        dump, analysis = folder / "train", folder / "analysis"
        trained = reuse and (dump / "hf" / "config.json").is_file()
        analysed = trained and (analysis / "report.json").is_file()
        train_s, analysis_s = (previous.get(key, float("nan")) for key in ("train_s", "analysis_s"))
        if not trained:
            sections = train_sections(config, model_config, dump)
            resume = reuse and (dump / "checkpoint").is_dir()
            if not resume:  # a fresh run: nothing of an earlier one may be resumed or appended to
                shutil.rmtree(dump, ignore_errors=True)
            print(f"[{name}] {'resuming' if resume else 'training'}: softpick train {shlex.join(to_argv(sections))}",
                  flush=True)
            seconds = run_training(config, sections, folder / "train.log")
            train_s = train_s + seconds if resume and math.isfinite(train_s) else seconds
            _save_timing(folder, train_s=train_s)
        if not analysed:
            start = time.perf_counter()
            print(f"[{name}] analysing {dump / 'hf'}", flush=True)
            analyze(dump / "hf", analyze_options(dump / "hf", analysis, **config.get("analyze", {})))
            analysis_s = time.perf_counter() - start
            _save_timing(folder, analysis_s=analysis_s)
        if only:
            continue
        rows = read_metrics(dump)
        curves[name] = rows
        reports[name] = Report.load(analysis)
        results[name] = {"train_s": train_s, "analysis_s": analysis_s, "final_loss": _final(rows) or float("nan"),
                         "tokens": rows[-1]["tokens"] if rows else 0}
    if only:
        return None
    write_comparison(reports, out / "comparison")
    plot_learning_curves(curves, out / "learning_curves.png")
    plot_live_metrics(curves, out)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    summary = write_summary(config, out, results, reports, argv)
    print(f"wrote {summary}")
    return summary


def run_parallel(config: dict, argv: list[str], child: list[str], parallel: int, reuse: bool = False) -> Path:
    """Each variant in its own ``softpick experiment CHILD --only NAME`` process, ``parallel`` at a time,
    each on its own GPUs; then the comparison of all of them. Returns the summary path."""
    exp = config["experiment"]
    nproc, out = int(exp["nproc"]), Path(exp["out"])
    gpus = torch.cuda.device_count()
    if gpus and parallel * nproc > gpus:
        raise BadValue(f"--parallel {parallel} x nproc {nproc} needs {parallel * nproc} GPUs; {gpus} are visible.")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(gpus)]
    port = int(os.environ.get("MASTER_PORT", 29500))  # train.sh's torchrun rendezvous: one port per slot
    command = [sys.executable, "-m", "softpick", "experiment", *child, "--out", str(out)] + (["--reuse"] if reuse else [])
    slots: queue.Queue[int] = queue.Queue()  # slot k owns GPUs ids[k * nproc: (k + 1) * nproc]
    for slot in range(parallel):
        slots.put(slot)

    def one(name: str) -> int:
        slot = slots.get()
        try:
            env = {**os.environ, "MASTER_PORT": str(port + slot)}
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[slot * nproc:(slot + 1) * nproc])
            (out / name).mkdir(parents=True, exist_ok=True)
            print(f"[{name}] started on {'GPUs ' + env['CUDA_VISIBLE_DEVICES'] if gpus else 'the CPU'}; "
                  f"log {out / name / 'experiment.log'}", flush=True)
            with open(out / name / "experiment.log", "w") as log:
                code = subprocess.run([*command, "--only", name], stdout=log, stderr=subprocess.STDOUT, env=env).returncode
            print(f"[{name}] finished (exit {code})", flush=True)
            return code
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(parallel) as pool:
        codes = dict(zip(exp["variants"], pool.map(one, exp["variants"])))
    failed = [name for name, code in codes.items() if code != 0]
    if failed:
        raise Unavailable(f"variants {failed} failed; see OUT/NAME/experiment.log.")
    return run(config, argv, reuse=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``softpick experiment``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="softpick experiment", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="experiment toml (configs/experiments/*.toml)")
    p.add_argument("--out", default=None, help="output folder (default: experiment.out of the file)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the file, e.g. --set train.training.steps=50 (repeatable)")
    p.add_argument("--reuse", action="store_true", help="keep variants that have an export and a report; resume the others from their checkpoints")
    p.add_argument("--only", default=None, help="comma-separated variants to train and analyse (no comparison)")
    p.add_argument("--parallel", type=int, default=1,
                   help="variants run at the same time, each in its own process on its own nproc GPUs")
    args = p.parse_args(argv)
    config = load_experiment(args.config, args.set + ([f"experiment.out={json.dumps(args.out)}"] if args.out else []))
    only = args.only.split(",") if args.only else None
    unknown = [n for n in only or [] if n not in config["experiment"]["variants"]]
    if unknown:
        raise BadValue(f"--only names {unknown}, not in experiment.variants {config['experiment']['variants']}.")
    if args.parallel < 1:
        raise BadValue(f"--parallel must be >= 1, got {args.parallel}.")
    if args.parallel > 1 and only:
        raise BadValue("--parallel runs every variant; leave out --only.")
    if args.parallel > 1:
        child = [args.config] + [f for assignment in args.set for f in ("--set", assignment)]
        run_parallel(config, argv, child, args.parallel, reuse=args.reuse)
    else:
        run(config, argv, reuse=args.reuse, only=only)
    return 0
