"""Training throughput of softpick vs softmax with the real trainer (issue 5's benchmark).

Runs ``python -m softpick train`` once per attention type on the embedded corpus, with the same
flags, and reports the median tokens/s, TFLOP/s and MFU of the logged steps after the first
``--skip`` logs (compile and autotune happen there). MFU is the trainer's: 6·N (non-embedding) plus
causal attention FLOPs per token, against the peak given by ``--peak-flops``.

    python benchmarks/train_throughput.py --steps 40 --batch-size 8 --seq-len 4096 --compile \
        --peak-flops 989e12 --json out.json

flame's recipe (one packed row of 65,536 tokens, documents cut at 4,096)::

    python benchmarks/train_throughput.py --steps 40 --batch-size 1 --seq-len 65536 --context-len 4096 \
        --varlen --compile

``--fused-loss false`` measures the plain LM head + cross-entropy instead of the chunked loss.
``--converters none,float8`` runs every variant twice, plain (bf16 autocast) and with
``--model.converters float8`` (torchao ``Float8Linear`` on every Linear but the LM head, dynamic
scaling; needs torchao and a GPU of compute capability >= 8.9), and prints the float8 / bf16 ratio of
tokens/s and the last-step losses side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BASE_CONFIG = "configs/softpick_transformer_340M.json"
VARIANTS = {
    "softpick": {"attn_type": "softpick"},
    "softmax": {"attn_type": "softmax"},
    "softmax_plus_one": {"attn_type": "softmax_plus_one"},
    "sink": {"attn_type": "sink"},
    "softpick+ssmax": {"attn_type": "softpick", "ssmax": True},
    "softmax+ssmax": {"attn_type": "softmax", "ssmax": True},
    "softmax+gate": {"attn_type": "softmax", "output_gate": "elementwise"},
    "softpick+gate": {"attn_type": "softpick", "output_gate": "headwise"},
}
"""--attn names -> fields changed in the paper's 340M config (issue 10's variants)."""


def run_one(attn: str, args: argparse.Namespace, dump: Path, converter: str = "none") -> dict:
    dump.mkdir(parents=True, exist_ok=True)
    config = json.loads(Path(args.config).read_text()) | VARIANTS[attn]
    (dump / "model_config.json").write_text(json.dumps(config))
    cmd = [
        sys.executable, "-m", "softpick", "train",
        "--model.config", str(dump / "model_config.json"),
        "--job.dump_folder", str(dump),
        "--training.dataset", "none",
        "--training.steps", str(args.steps),
        "--training.batch_size", str(args.batch_size),
        "--training.seq_len", str(args.seq_len),
        "--training.context_len", str(args.context_len or args.seq_len),
        "--training.varlen", str(args.varlen).lower(),
        "--training.fused_loss", str(args.fused_loss).lower(),
        "--training.num_workers", "2",
        "--lr_scheduler.warmup_steps", "10",
        "--optimizer.eps", "1e-15",
        "--training.max_norm", "1.0",
        "--metrics.log_freq", str(args.log_freq),
        "--checkpoint.enable_checkpoint", "false",
        "--training.compile", "true" if args.compile else "false",
    ]
    if args.peak_flops:
        cmd += ["--metrics.peak_flops", str(args.peak_flops)]
    if converter != "none":
        cmd += ["--model.converters", converter]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    rows = [json.loads(line) for line in (dump / "metrics.jsonl").read_text().splitlines()]
    timed = rows[args.skip:]
    if not timed:
        raise SystemExit(f"{attn}: only {len(rows)} logged steps, fewer than --skip {args.skip}.")

    def median(key: str) -> float | None:
        values = [r[key] for r in timed if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {
        "attn": attn if converter == "none" else f"{attn}+{converter}", "converter": converter, "tps": median("tps"), "tflops": median("tflops"), "mfu": median("mfu"),
        "loss_last": rows[-1].get("loss"), "peak_mem_gib": max(r.get("memory_gib") or 0.0 for r in rows),
        "logged_steps": len(timed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=BASE_CONFIG, help="model config json the variants change")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--log-freq", type=int, default=5)
    parser.add_argument("--skip", type=int, default=2, help="logged steps left out of the medians")
    parser.add_argument("--context-len", type=int, default=None, help="longest document piece (default seq-len)")
    parser.add_argument("--varlen", action="store_true", help="flame's recipe: one packed row (use --batch-size 1)")
    parser.add_argument("--fused-loss", default="true", choices=("true", "false"),
                        help="the chunked linear cross-entropy (default) or the plain LM head + cross-entropy")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--peak-flops", type=float, default=None)
    parser.add_argument("--attn", default="softpick,softmax", help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--converters", default="none", help="comma-separated model converters to compare: none, float8")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    converters = args.converters.split(",")
    if any(c not in ("none", "float8") for c in converters):
        parser.error(f"--converters: choose from none, float8 (got {args.converters}).")
    unknown = [a for a in args.attn.split(",") if a not in VARIANTS]
    if unknown:
        parser.error(f"--attn: unknown variants {unknown}; choose from {', '.join(VARIANTS)}.")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(attn, c) for attn in args.attn.split(",") for c in converters]
        for attn, converter in runs:  # each row is printed and saved as it finishes (a cut-off run keeps them)
            results.append(run_one(attn, args, Path(tmp) / f"{attn}-{converter}", converter))
            print(f"RESULT {_row(results[-1])}", flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))
    print("\n| attn | tokens/s | TFLOP/s | MFU | peak GiB | last loss |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(_row(r))
    plain = {r["attn"]: r for r in results if r["converter"] == "none"}
    for r in results:
        base = plain.get(r["attn"].rsplit("+", 1)[0]) if r["converter"] != "none" else None
        if base is not None:
            print(f"{r['attn']} / bf16 tokens/s: {r['tps'] / base['tps']:.3f}; last loss {r['loss_last']:.3f} "
                  f"vs {base['loss_last']:.3f}")
    softmax = next((r for r in results if r["attn"] == "softmax"), None)
    if softmax is not None:
        for r in results:
            if r is not softmax and r["converter"] == "none":
                print(f"{r['attn']} / softmax tokens/s: {r['tps'] / softmax['tps']:.3f}")


def _row(r: dict) -> str:
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
    tflops = f"{r['tflops']:.1f}" if r["tflops"] is not None else "n/a"
    return f"| {r['attn']} | {r['tps']:.0f} | {tflops} | {mfu} | {r['peak_mem_gib']:.1f} | {r['loss_last']:.3f} |"


if __name__ == "__main__":
    main()
