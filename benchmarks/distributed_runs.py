"""Issue 8's runs: one model trained on 1 and 2 devices (FSDP2, DDP, TP) and a resharded resume.

Every run is ``NGPU=N bash train.sh`` (torchrun) with the same global batch, seed and steps on the
embedded corpus; the script then compares the loss curves and throughput and writes a markdown table.

Runs (all with ``--metrics.log_freq 1``):

- ``single``: 1 process, batch = global batch.
- ``fsdp``: 2 processes, ``data_parallel_shard_degree 2``, batch = global / 2; saves a DCP checkpoint
  halfway (``--checkpoint.interval steps/2``).
- ``ddp``: 2 processes, ``data_parallel_replicate_degree 2``, batch = global / 2.
- ``tp``: 2 processes, ``tensor_parallel_degree 2``, batch = global (data parallel degree 1).
- ``resume2``: the ``fsdp`` run's halfway checkpoint resumed with 2 processes (FSDP); its losses must
  repeat the ``fsdp`` run's second half.
- ``resume1``: the same checkpoint resumed with 1 process (model and optimizer resharded from 2 shards
  to 1); the data stream restarts (``--checkpoint.exclude_from_loading dataloader``: a data position is
  per data-parallel shard), so its losses follow the ``fsdp`` run's on other batches.

Data: each data-parallel rank reads its own shard of the documents, so the ``single`` and ``tp`` runs
(one data-parallel rank) see identical batches and must match step by step within bf16 noise, while
``fsdp`` and ``ddp`` see the same amount of different text; their curves are compared by the mean
loss over windows of steps. ``--nproc`` is the number of processes of the parallel runs (2 here).

    python benchmarks/distributed_runs.py --model configs/softpick_transformer_340M.json \
        --steps 60 --global-batch 16 --seq-len 2048 --compile --out /tmp/dist
    python benchmarks/distributed_runs.py --model tiny.json --steps 6 --global-batch 4 --seq-len 64 \
        --out /tmp/dist-cpu     # CPU smoke test (gloo)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
"""NVLink multicast stays off on shared hosts."""


def trainer_flags(args: argparse.Namespace, dump: Path, batch: int) -> list[str]:
    flags = [
        "--model.config", args.model, "--job.dump_folder", str(dump),
        "--training.steps", str(args.steps), "--training.batch_size", str(batch),
        "--training.seq_len", str(args.seq_len), "--training.context_len", str(args.seq_len),
        "--training.seed", "79", "--training.num_workers", "1",
        "--optimizer.lr", "3e-4", "--optimizer.eps", "1e-15", "--training.max_norm", "1.0",
        "--lr_scheduler.warmup_steps", str(max(1, args.steps // 10)), "--lr_scheduler.decay_type", "cosine",
        "--lr_scheduler.lr_min", "0.1", "--metrics.log_freq", "1", "--metrics.progress_bar", "false",
        "--training.compile", "true" if args.compile else "false",
        "--checkpoint.enable_checkpoint", "true", "--checkpoint.interval", str(args.steps // 2),
        "--checkpoint.keep_latest_k", "0",
    ]
    if args.peak_flops:
        flags += ["--metrics.peak_flops", str(args.peak_flops)]
    return flags


def run(name: str, nproc: int, flags: list[str], out: Path, timeout: float) -> dict:
    """One torchrun; returns its metrics rows, wall time and return code (the log goes to out/NAME.log)."""
    cmd = ["bash", str(Path(__file__).resolve().parent.parent / "train.sh"), *flags]
    env = {**os.environ, **MULTICAST_OFF, "NGPU": str(nproc), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4")}
    start = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - start
    dump = Path(flags[flags.index("--job.dump_folder") + 1])
    metrics = dump / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    print(f"{name}: rc {rc}, {len(rows)} steps logged, {wall:.0f} s", flush=True)
    return {"name": name, "nproc": nproc, "rc": rc, "wall_s": wall, "rows": rows}


def median_of(rows: list[dict], key: str, skip: int) -> float | None:
    values = [r[key] for r in rows[skip:] if r.get(key) is not None]
    return statistics.median(values) if values else None


def window_means(rows: list[dict], width: int) -> list[float]:
    losses = [r["loss"] for r in rows]
    return [statistics.fmean(losses[i:i + width]) for i in range(0, len(losses) - width + 1, width)]


def max_rel_diff(a: list[dict], b: list[dict], key: str = "loss", last_step: int | None = None) -> float | None:
    """Largest relative difference of ``key`` between runs a and b over their common steps (<= last_step)."""
    by_step = {r["step"]: r[key] for r in b}
    diffs = [abs(r[key] - by_step[r["step"]]) / abs(by_step[r["step"]]) for r in a
             if r["step"] in by_step and (last_step is None or r["step"] <= last_step)]
    return max(diffs) if diffs else None


def summarize(runs: dict[str, dict], args: argparse.Namespace) -> str:
    skip = min(5, max(0, args.steps // 4))  # steps that include compile and autotune
    single = runs.get("single")
    base_tps = median_of(single["rows"], "tps", skip) if single else None
    lines = [
        f"Model `{args.model}`, {args.steps} steps, global batch {args.global_batch} x {args.seq_len} tokens, "
        f"compile {'on' if args.compile else 'off'}; tokens/s, TFLOP/s and MFU are medians per device after "
        f"the first {skip} steps.", "",
        "| run | processes | rc | steps | tokens/s per device | TFLOP/s per device | MFU | scaling vs 1 device "
        "| peak GiB | wall s | max rel. loss diff vs single, steps 1-50 / all | loss means per 10 steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        tps = median_of(r["rows"], "tps", skip)
        tflops, mfu = median_of(r["rows"], "tflops", skip), median_of(r["rows"], "mfu", skip)
        scaling = f"{tps / base_tps:.3f}" if tps and base_tps else "-"
        mem = max((row.get("memory_gib") or 0.0 for row in r["rows"]), default=0.0)
        compared = single and name != "single"
        diff = max_rel_diff(r["rows"], single["rows"]) if compared else None
        early = max_rel_diff(r["rows"], single["rows"], last_step=50) if compared else None
        means = ", ".join(f"{m:.3f}" for m in window_means(r["rows"], 10))
        lines.append(
            f"| {name} | {r['nproc']} | {r['rc']} | {len(r['rows'])} | {tps or 0:.0f} | {tflops or 0:.1f} | "
            f"{'-' if mfu is None else f'{mfu:.1%}'} | {scaling} | {mem:.1f} | {r['wall_s']:.0f} | "
            f"{'-' if early is None else f'{early:.2e}'} / {'-' if diff is None else f'{diff:.2e}'} | {means} |"
        )
    fsdp = runs.get("fsdp")
    for name in ("resume2", "resume1"):
        if fsdp and name in runs:
            diff = max_rel_diff(runs[name]["rows"], fsdp["rows"])
            steps = [r["step"] for r in runs[name]["rows"]]
            lines.append(f"\n{name}: steps {steps[:1]}..{steps[-1:]} resumed from fsdp's step {args.steps // 2}; "
                         f"max relative loss difference vs the fsdp run: {diff if diff is None else f'{diff:.2e}'}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model config json")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--peak-flops", type=float, default=None)
    p.add_argument("--runs", default="single,tp,fsdp,resume2,resume1,ddp", help="which runs, in this order")
    p.add_argument("--run-timeout", type=float, default=240.0, help="seconds before one run is killed")
    p.add_argument("--out", type=Path, required=True, help="folder for summary.md, runs.json and the logs")
    p.add_argument("--work", type=Path, default=None, help="folder for the runs' dumps (default OUT/runs)")
    args = p.parse_args()
    if args.global_batch % args.nproc:
        p.error(f"--global-batch {args.global_batch} must be a multiple of --nproc {args.nproc}.")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out / "runs"
    half = args.steps // 2
    n, gb = args.nproc, args.global_batch
    specs = {
        "single": (1, gb, []),
        "fsdp": (n, gb // n, ["--training.data_parallel_shard_degree", str(n)]),
        "ddp": (n, gb // n, ["--training.data_parallel_replicate_degree", str(n),
                             "--training.data_parallel_shard_degree", "1"]),
        "tp": (n, gb, ["--training.tensor_parallel_degree", str(n), "--training.data_parallel_shard_degree", "1"]),
        "resume2": (n, gb // n, ["--training.data_parallel_shard_degree", str(n)]),
        # the data position is per data-parallel shard and does not carry over to one rank: restart the stream
        "resume1": (1, gb, ["--checkpoint.exclude_from_loading", "dataloader"]),
    }
    runs: dict[str, dict] = {}
    for name in args.runs.split(","):
        nproc, batch, extra = specs[name]
        dump = work / name
        shutil.rmtree(dump, ignore_errors=True)
        if name.startswith("resume"):
            source = work / "fsdp" / "checkpoint" / f"step-{half}"
            if not source.is_dir():
                print(f"{name}: skipped, no fsdp checkpoint at {source}", flush=True)
                continue
            shutil.copytree(source, dump / "checkpoint" / f"step-{half}")
        runs[name] = run(name, nproc, trainer_flags(args, dump, batch) + extra, args.out, args.run_timeout)
        (args.out / "runs.json").write_text(json.dumps(runs, indent=1))
        (args.out / "summary.md").write_text(summarize(runs, args) + "\n")
    print(summarize(runs, args))


if __name__ == "__main__":
    main()
