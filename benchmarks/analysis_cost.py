"""What ``--metrics.analysis_freq N`` costs: one probe's time over N training steps' time.

Usage (from the repository root):

    python benchmarks/analysis_cost.py                       # CPU: the cpu_variants toy, 16 x 128, one thread
    python benchmarks/analysis_cost.py --gpu                 # GPU: the 340M config, 8 x 2048 per step

Builds the trainer of ``configs/experiments/cpu_variants.toml`` (softpick; ``--gpu``: the 340M config,
batch 8 x 2048, bf16 autocast), runs ``--steps`` training steps and a probe after every
``--every``-th, timing each separately (steps and probes interleave, so a machine whose load drifts
slows both alike), and prints the median step, the median probe and the cost at N = 100:
probe / (100 x step).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def sections(gpu: bool, dump: str, samples: int) -> dict:
    from softpick.experiment import load_experiment

    config = load_experiment(ROOT / "configs/experiments/cpu_variants.toml")
    train = {k: dict(v) for k, v in config["train"].items()}
    model = ROOT / "configs/softpick_transformer_340M.json"
    if not gpu:
        model = Path(dump) / "model.json"
        import json

        model.write_text(json.dumps({**config["model"], "attn_type": "softpick"}))
    else:
        train["training"].update(batch_size=8, seq_len=2048, context_len=2048)
    train.setdefault("model", {})["config"] = str(model)
    train.setdefault("job", {})["dump_folder"] = dump
    train["metrics"] = {"log_freq": 1000, "analysis_freq": 100, "analysis_samples": samples, "progress_bar": False}
    train["training"]["steps"] = 10_000
    return train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--every", type=int, default=5, help="a probe after every this many steps")
    p.add_argument("--samples", type=int, default=8, help="metrics.analysis_samples")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if not args.gpu:
        torch.set_num_threads(args.threads)
    from softpick.train.config import from_dict
    from softpick.train.trainer import Trainer

    sync = torch.cuda.synchronize if args.gpu else (lambda: None)
    with tempfile.TemporaryDirectory() as dump:
        trainer = Trainer(from_dict(sections(args.gpu, dump, args.samples), "analysis_cost"))
        data = iter(trainer.loader)
        steps, probes = [], []
        try:
            for i in range(args.steps + 3):
                batch = [next(data)]
                sync()
                t0 = time.perf_counter()
                loss, norm = trainer.train_step(batch)
                float(loss)
                sync()
                if i >= 3:  # warm-up steps are not timed
                    steps.append(time.perf_counter() - t0)
                if i % args.every == 0:
                    t0 = time.perf_counter()
                    trainer.live_analysis(trainer.model, trainer._autocast())
                    sync()
                    if i >= 3:
                        probes.append(time.perf_counter() - t0)
        finally:
            trainer.close()
    step, probe = statistics.median(steps), statistics.median(probes)
    device = torch.cuda.get_device_name() if args.gpu else f"CPU, {torch.get_num_threads()} thread(s)"
    tr = trainer.config.training
    print(f"{device}, torch {torch.__version__}: batch {tr.batch_size} x {tr.seq_len}, probe batch "
          f"{trainer.live_analysis.batch['input_ids'].shape[0]} x {trainer.live_analysis.batch['input_ids'].shape[1]}; "
          f"median step {step * 1e3:.1f} ms ({len(steps)} steps), median probe {probe * 1e3:.1f} ms "
          f"({len(probes)} probes); cost at analysis_freq 100: {100 * probe / (100 * step):.2f}% of the step time")


if __name__ == "__main__":
    sys.exit(main())
