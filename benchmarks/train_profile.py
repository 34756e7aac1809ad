"""Where a training step's time goes: torch.profiler over a few steps of the real trainer, by category.

Builds the trainer in-process (the flags of ``softpick train``, embedded corpus, no checkpoints),
runs ``--warmup`` steps (compile, autotune), times ``--timed`` steps without the profiler
(tokens/s, MFU, peak memory), then profiles ``--profiled`` steps and sums the time of every GPU
kernel (on a CPU run: every op's own CPU time) into categories:

    matmul                  cuBLAS / CUTLASS / Triton-template GEMMs of the blocks
    attention fwd / bwd     the softpick::* attention ops' kernels
    LM head + loss          kernels of ops with a [*, vocab] operand (LM-head GEMMs, the logits' float32
                            cast) and the cross-entropy (the whole chunked linear cross-entropy when fused)
    norms + elementwise     every other kernel: RMSNorm, RoPE, SwiGLU, casts, embedding, copies
    optimizer               clip_grad_norm_ and Optimizer.step
    data (host)             host time spent in the loader's next(), per step
    host->device copies     Memcpy HtoD
    unattributed kernels    kernels the profiler links to no op
    GPU idle                step wall time minus the time any kernel runs: launch gaps, syncs, data waits

and counts the host syncs (cudaStreamSynchronize / cudaDeviceSynchronize / blocking copies / .item())
and the torch.compile graphs built during the profiled steps (0 = no recompiles). ``--fused-loss
false,true`` profiles both loss paths on one trainer (the flag is toggled between them).

    python benchmarks/train_profile.py --compile --batch-size 8 --seq-len 4096                  # dense
    python benchmarks/train_profile.py --compile --batch-size 1 --seq-len 65536 --varlen \\
        --context-len 4096 --fused-loss false,true --json varlen.json                            # flame's recipe
    python benchmarks/train_profile.py --config configs/softpick_transformer_tiny.json \\
        --batch-size 2 --seq-len 64 --warmup 1 --timed 1 --profiled 1                           # CPU, seconds

The trace of the last profiled step set is written with ``--trace out.json`` (chrome://tracing, Perfetto).
Other flags (``--training.dataset ...``, ``--model.tokenizer_path ...``) go to the trainer as they are.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from softpick.train.metrics import attention_span

CATEGORIES = ("matmul", "attention fwd", "attention bwd", "LM head + loss", "norms + elementwise", "optimizer",
              "host->device copies", "unattributed kernels", "data (host)", "GPU idle")

MATMUL_NAMES = ("gemm", "nvjet", "xmma", "cutlass", "wgmma", "triton_tem", "splitk", "aten::mm", "aten::addmm",
                "aten::bmm", "aten::_scaled_mm", "aten::baddbmm", "mkl", "onednn")
LOSS_OPS = ("softpick::linear_cross_entropy", "cross_entropy", "nll_loss", "log_softmax", "NllLoss",
            "LogSoftmax")
SYNC_NAMES = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::_local_scalar_dense")


def classify(name: str, ancestors: list[str], shapes: list, vocab: int) -> str:
    """Category of a kernel (or, on CPU, an op) called ``name`` launched under the ops ``ancestors``
    (innermost first), whose launching op had input ``shapes``."""
    lowered = name.lower()
    if "memcpy htod" in lowered or "memcpy h2d" in lowered:
        return "host->device copies"
    if any("Optimizer.step" in a or a == "clip_grad_norm" for a in ancestors):
        return "optimizer"
    for a in [name, *ancestors]:
        if a.startswith("softpick::") and "attention" in a:
            return "attention bwd" if "bwd" in a or "backward" in a.lower() else "attention fwd"
    if any(key in a for a in [name, *ancestors] for key in LOSS_OPS):
        return "LM head + loss"
    # an operand with the vocab dimension: the LM head's GEMMs and the logits' casts (not the embedding)
    if any(vocab in s for s in shapes if isinstance(s, (list, tuple))) and not any(
            "embedding" in a.lower() for a in [name, *ancestors]):
        return "LM head + loss"
    if any(key in lowered for key in MATMUL_NAMES):
        return "matmul"
    return "norms + elementwise"


def _chain(event) -> list[str]:
    names = []
    while event is not None:
        names.append(event.name)
        event = event.cpu_parent
    return names


def summarize(prof, steps: int, wall_s: float, vocab: int, cuda: bool) -> dict:
    """Per-step milliseconds by category, syncs per step and GPU idle time, from a finished profiler.

    Each GPU kernel is charged to the op that launched it (the profiler lists it in that op's
    ``kernels``); kernels no op claims are "unattributed kernels". Busy time is the union of the
    kernels' intervals on the device timeline."""
    from torch.autograd import DeviceType

    events = prof.events()
    ops = [e for e in events if e.device_type == DeviceType.CPU and not e.is_async]
    totals = dict.fromkeys(CATEGORIES, 0.0)
    if cuda:
        attributed = 0.0
        for op in ops:
            if not op.kernels:
                continue
            chain = _chain(op)
            for kernel in op.kernels:
                totals[classify(kernel.name, chain, op.input_shapes, vocab)] += kernel.duration
                attributed += kernel.duration
        intervals = sorted((e.time_range.start, e.time_range.end) for e in events if e.device_type == DeviceType.CUDA)
        busy, end = 0.0, float("-inf")
        for start, stop in intervals:
            if stop > end:
                busy += stop - max(start, end)
                end = stop
        kernel_total = sum(stop - start for start, stop in intervals)
        totals["unattributed kernels"] = max(kernel_total - attributed, 0.0)
        totals["GPU idle"] = max(wall_s * 1e6 - (busy if intervals else attributed), 0.0)
    else:
        for op in ops:
            totals[classify(op.name, _chain(op.cpu_parent), op.input_shapes, vocab)] += op.self_cpu_time_total
    totals["data (host)"] = sum(e.cpu_time_total for e in ops if e.name == "data")
    syncs = [e for e in events if e.name in SYNC_NAMES or e.name == "cudaMemcpy"]
    return {"ms_per_step": {k: v / steps / 1e3 for k, v in totals.items()}, "step_ms": wall_s / steps * 1e3,
            "syncs_per_step": len(syncs) / steps, "sync_names": sorted({e.name for e in syncs})}


def build_trainer(args: argparse.Namespace, dump: Path):
    from softpick.train.config import parse_args
    from softpick.train.trainer import Trainer

    config = json.loads(Path(args.config).read_text())
    config["attn_type"] = args.attn
    if args.attn_impl:
        config["attn_impl"] = args.attn_impl
    (dump / "model_config.json").write_text(json.dumps(config))
    argv = [
        "--model.config", str(dump / "model_config.json"), "--job.dump_folder", str(dump),
        "--training.steps", str(10**6), "--training.batch_size", str(args.batch_size),
        "--training.seq_len", str(args.seq_len), "--training.context_len", str(args.context_len or args.seq_len),
        "--training.num_workers", str(args.num_workers), "--optimizer.eps", "1e-15",
        "--lr_scheduler.warmup_steps", "10", "--training.max_norm", "1.0",
        "--checkpoint.enable_checkpoint", "false", "--training.compile", str(args.compile).lower(),
        "--training.varlen", str(args.varlen).lower(), "--metrics.progress_bar", "false",
        "--activation_checkpoint.mode", args.ac,
    ]
    argv += args.trainer_flags
    if args.float8:
        argv += ["--model.converters", "float8"]
    if args.peak_flops:
        argv += ["--metrics.peak_flops", str(args.peak_flops)]
    return Trainer(parse_args(argv)), config["vocab_size"]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/softpick_transformer_340M.json")
    parser.add_argument("--attn", default="softpick", help="attn_type: softpick, softmax, ...")
    parser.add_argument("--attn-impl", default=None, help="attn_impl of the model config (default: its own)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--context-len", type=int, default=None)
    parser.add_argument("--varlen", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--float8", action="store_true")
    parser.add_argument("--ac", default="none", help="activation_checkpoint.mode: none, selective, full")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--fused-loss", default="true", help="comma-separated: true, false (toggled in turn)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--timed", type=int, default=5)
    parser.add_argument("--profiled", type=int, default=3)
    parser.add_argument("--peak-flops", type=float, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--trace", type=Path, default=None)
    args, args.trainer_flags = parser.parse_known_args(argv)
    fused_values = [v.strip().lower() == "true" for v in args.fused_loss.split(",")]

    from torch._dynamo.utils import counters
    from torch.profiler import ProfilerActivity, profile, record_function

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer, vocab = build_trainer(args, Path(tmp))
        cuda = trainer.device.type == "cuda"
        data = iter(trainer.loader)

        def step() -> dict:
            with record_function("data"):
                batch = next(data)
            trainer.train_step([batch])
            return batch

        def sync() -> None:
            if cuda:
                torch.cuda.synchronize()

        tokens = args.batch_size * args.seq_len
        base = {"config": Path(args.config).stem, "attn": args.attn, "varlen": args.varlen,
                "batch": f"{args.batch_size}x{args.seq_len}", "float8": args.float8, "compile": args.compile,
                "device": torch.cuda.get_device_name() if cuda else "cpu"}

        def measure(fused: bool) -> dict:
            if hasattr(trainer.model, "fuse_linear_cross_entropy"):
                trainer.model.fuse_linear_cross_entropy = fused
            for _ in range(args.warmup):
                step()
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            times, flops = [], 0.0
            for _ in range(args.timed):
                t0 = time.perf_counter()
                batch = step()
                sync()
                times.append(time.perf_counter() - t0)
                flops += tokens * trainer.flops_fn(attention_span(batch))
            step_s, peak = statistics.median(times), trainer.throughput.peak
            row = {**base, "fused_loss": fused, "tokens_per_s": tokens / step_s, "step_ms_timed": step_s * 1e3,
                   "mfu": flops / sum(times) / peak if peak else None,
                   "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
            print(f"TIMED {json.dumps(row)}", flush=True)  # kept if the profile below fails
            graphs = counters["stats"]["unique_graphs"]
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with profile(activities=activities, record_shapes=True) as prof:
                t0 = time.perf_counter()
                for _ in range(args.profiled):
                    step()
                sync()
                wall = time.perf_counter() - t0
            if args.trace:
                prof.export_chrome_trace(str(args.trace.with_suffix(f".{'fused' if fused else 'plain'}.json")))
            row["graphs_built_while_profiling"] = counters["stats"]["unique_graphs"] - graphs
            return row | summarize(prof, args.profiled, wall, vocab, cuda)

        for fused in fused_values:
            try:
                row = measure(fused)
            except torch.OutOfMemoryError as err:  # a finding (the plain loss at 64k tokens), not a crash
                row = {**base, "fused_loss": fused, "oom": str(err).split(".")[0],
                       "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
                del err
                trainer.optimizer.zero_grad(set_to_none=True)
                gc.collect()
                torch.cuda.empty_cache()
            results.append(row)
            print(f"RESULT {json.dumps(row)}", flush=True)
        trainer.close()
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


def print_table(results: list[dict]) -> None:
    """One markdown table: a column per run, a row per category (ms per step); OOM runs say so."""
    heads = [f"{r['attn']} {'varlen' if r['varlen'] else 'dense'} {r['batch']}"
             f"{' fp8' if r['float8'] else ''} {'fused' if r['fused_loss'] else 'plain'} CE" for r in results]

    def cell(r: dict, fmt) -> str:
        try:
            return fmt(r)
        except (KeyError, TypeError):
            return "OOM" if "oom" in r else "n/a"

    rows = [(cat, lambda r, c=cat: f"{r['ms_per_step'][c]:.1f}") for cat in CATEGORIES] + [
        ("step (profiled)", lambda r: f"{r['step_ms']:.1f}"),
        ("step (timed)", lambda r: f"{r['step_ms_timed']:.1f}"),
        ("tokens/s", lambda r: f"{r['tokens_per_s']:.0f}"),
        ("MFU", lambda r: f"{r['mfu']:.1%}"),
        ("peak GiB", lambda r: f"{r['peak_gib']:.1f}" + (" (OOM)" if "oom" in r else "")),
        ("host syncs / step", lambda r: f"{r['syncs_per_step']:.1f}"),
        ("graphs built while profiling", lambda r: str(r["graphs_built_while_profiling"])),
    ]
    print("\n| ms per step | " + " | ".join(heads) + " |")
    print("|---|" + "---|" * len(results))
    for label, fmt in rows:
        print(f"| {label} | " + " | ".join(cell(r, fmt) for r in results) + " |")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
