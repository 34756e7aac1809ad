"""``softpick demo``: train a tiny softpick model on the embedded corpus on the CPU, then analyse it.

Usage::

    softpick demo                          # about 2.5 minutes on one idle core, writes outputs/demo-softpick
    softpick demo --attn-type softmax --out outputs/demo-softmax   # the softmax baseline

Steps, all offline and in this process: write the model config (a 4-layer, 128-wide
``softpick_transformer``) to ``OUT/model_config.json``; run the project's trainer
(:class:`softpick.train.trainer.Trainer`, the same code as ``softpick train``; the equivalent command
line is printed) on the embedded corpus and tokenizer, with AdamW and linear warmup plus cosine decay,
logging every step to ``OUT/metrics.jsonl``; export the model and tokenizer in Hugging Face format to
``OUT/hf``; reload that export with the ``transformers`` Auto classes and print a greedy sample
generated with the KV cache; run ``softpick analyze`` (:mod:`softpick.analysis.cli`) on it over the
embedded validation split, which writes ``OUT/analysis/report.md`` and prints the validation loss,
sink rate, sparsity, kurtosis and the weight-quantization perplexities. The run is deterministic for
a given ``--seed`` and ``--threads``. It uses one thread by default: the matrices are too small for a
second thread to gain much, and with more threads than free cores (another job running) PyTorch's
thread pool slows down several-fold.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers

from softpick.analysis.cli import analyze, analyze_options, int_list
from softpick.corpus import embedded_tokenizer
from softpick.errors import UserError
from softpick.models import ATTN_TYPES
from softpick.train.config import from_dict, to_argv
from softpick.train.trainer import Trainer

PROMPT = "Once upon a time, there was a little girl named"


@dataclass
class DemoOptions:
    """Settings of one demo run (the command-line flags, and sizes the tests shrink)."""

    steps: int = 300
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 3e-3
    out: str = "outputs/demo-softpick"
    attn_type: str = "softpick"
    seed: int = 0
    threads: int = 1  # the model is too small to gain much from more, and loses a lot when cores are busy
    progress: bool = True
    hidden_size: int = 128
    num_layers: int = 4
    max_new_tokens: int = 48
    analysis_samples: int = 200  # validation documents analysed (200 = the whole embedded split)
    quant_bits: list[int] = field(default_factory=lambda: [8, 4, 3, 2])  # [] skips the quantization study


@dataclass
class DemoResult:
    """What a demo run measured. Losses are mean next-token cross-entropy per token, in nats."""

    first_train_loss: float  # the loss of step 1 (about ln(vocab) for a fresh model)
    final_train_loss: float  # mean of the last 10 steps
    val_loss: float  # the analysis' perplexity pass over the validation samples
    sink_rate: float  # percent of (layer, head) putting > 0.3 of their attention on the first token
    first_token_mass: float  # mean attention on the first token over heads and queries
    sparsity: float  # percent of causal attention weights <= 1e-5
    max_kurtosis: float  # largest per-layer kurtosis of the hidden states (3 for a Gaussian)
    max_abs_activation: float
    quantization: dict[str, dict[str, float]]  # method -> bits -> validation perplexity
    wall_time_s: float  # whole run: config, training, export, sampling and analysis
    train_time_s: float  # Trainer construction, training and HF export
    analysis_time_s: float
    sample: str
    out: str
    report: str  # path of report.md


def parse_args(argv: list[str] | None) -> DemoOptions:
    """Turn ``softpick demo`` flags into DemoOptions (defaults: DemoOptions' field defaults)."""
    d = DemoOptions()
    p = argparse.ArgumentParser(prog="softpick demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps (default %(default)s)")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="tokens per row (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="rows per step (default %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default %(default)s)")
    p.add_argument("--out", default=d.out, help="output directory (default %(default)s)")
    p.add_argument("--attn-type", choices=ATTN_TYPES, default=d.attn_type, help="default %(default)s")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of init and data order (default %(default)s)")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads for torch (default %(default)s)")
    p.add_argument("--analysis-samples", type=int, default=d.analysis_samples,
                   help="validation documents to analyse (default %(default)s, the whole embedded split)")
    p.add_argument("--quant-bits", type=int_list, default=d.quant_bits,
                   help="weight bit widths of the quantization study, or 'none' (default 8,4,3,2)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")
    args = p.parse_args(argv)
    for name in ("steps", "seq_len", "batch_size", "threads", "analysis_samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if args.seq_len < 2:
        p.error(f"--seq-len must be at least 2 (one token to predict from another), got {args.seq_len}.")
    if not args.lr > 0:
        p.error(f"--lr must be positive, got {args.lr}.")
    return DemoOptions(**vars(args))


def model_config(options: DemoOptions, tokenizer) -> dict:
    """The ``softpick_transformer`` config json: about 1.4M parameters with the ~2k-token vocabulary."""
    return {
        "model_type": "softpick_transformer",
        "attn_type": options.attn_type,
        "vocab_size": len(tokenizer),
        "hidden_size": options.hidden_size,
        "intermediate_size": options.hidden_size * 3,
        "num_hidden_layers": options.num_layers,
        "num_attention_heads": options.hidden_size // 32,
        "num_key_value_heads": options.hidden_size // 32,
        "max_position_embeddings": max(512, options.seq_len),
        "initializer_range": 0.02,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def train_sections(options: DemoOptions, config_path: Path) -> dict[str, dict]:
    """The trainer's config of the demo's run, as :func:`softpick.train.config.from_dict` takes it (no
    dataset: the embedded corpus and tokenizer)."""
    return {
        "job": {"dump_folder": options.out, "description": f"softpick demo ({options.attn_type})"},
        "model": {"config": str(config_path)},
        "optimizer": {"lr": options.lr, "implementation": "foreach"},
        "lr_scheduler": {"warmup_steps": max(1, options.steps // 10), "decay_type": "cosine", "lr_min": 0.1},
        "training": {"steps": options.steps, "batch_size": options.batch_size, "seq_len": options.seq_len,
                     "context_len": options.seq_len, "seed": options.seed},
        "metrics": {"log_freq": 1},
    }


def analysis_options(options: DemoOptions, model_dir: Path, out_dir: Path):
    """The ``softpick analyze`` options: the embedded validation split cut at the training length, on CPU."""
    return analyze_options(
        model_dir, out_dir, num_samples=options.analysis_samples, seq_len=options.seq_len,
        batch_size=options.batch_size, device="cpu", seed=options.seed, quant_bits=list(options.quant_bits),
        no_progress=not options.progress,
    )


def train(options: DemoOptions) -> tuple[Path, list[float]]:
    """Train with :class:`Trainer` in this process; returns the HF export folder and the loss of every step."""
    out = Path(options.out)
    if (out / "checkpoint").exists() or ((out / "metrics.jsonl").exists() and not (out / "demo_result.json").exists()):
        raise UserError(f"--out {out} holds a training run the demo did not write (checkpoint/ or metrics.jsonl); "
                        f"the demo would replace it: give another --out.")
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)  # the trainer appends; a rerun starts a fresh log
    config_path = out / "model_config.json"
    config_path.write_text(json.dumps(model_config(options, embedded_tokenizer()), indent=2) + "\n")
    sections = train_sections(options, config_path)
    print(f"training, same as: softpick train {shlex.join(to_argv(sections))}", flush=True)
    if not options.progress:
        sections["metrics"]["progress_bar"] = False
    trainer = Trainer(from_dict(sections, "the demo's training config"))
    try:
        n_params = sum(p.numel() for p in trainer.model.parameters())
        print(f"{options.attn_type} attention, {n_params / 1e6:.2f}M parameters, vocab {len(trainer.tokenizer)}, "
              f"{options.steps} steps of {options.batch_size} x {options.seq_len} tokens", flush=True)
        trainer.train()
        trainer.export_hf(out / "hf")
    finally:
        trainer.close()
    with open(out / "metrics.jsonl", encoding="utf-8") as f:
        losses = [json.loads(line)["loss"] for line in f]
    return out / "hf", losses


@torch.no_grad()
def generate_sample(model_dir: Path, max_new_tokens: int) -> str:
    """Reload the HF export with the Auto classes; greedy continuation of PROMPT with the KV cache."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    prompt = tokenizer(PROMPT, return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                               pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(generated[0], skip_special_tokens=True)


def run(options: DemoOptions) -> DemoResult:
    """Train, export, sample and analyse (see the module docstring); sets torch's thread count."""
    start = time.perf_counter()
    torch.set_num_threads(options.threads)
    out = Path(options.out)
    hf_dir, losses = train(options)
    train_time = time.perf_counter() - start
    final_loss = sum(losses[-10:]) / len(losses[-10:])
    print(f"training loss {losses[0]:.3f} at step 1, {final_loss:.3f} over the last steps; "
          f"model and tokenizer in {hf_dir}/", flush=True)

    sample = generate_sample(hf_dir, options.max_new_tokens)
    print(f"sample: {sample}", flush=True)

    analysis_start = time.perf_counter()
    report = analyze(hf_dir, analysis_options(options, hf_dir, out / "analysis"))
    analysis_time = time.perf_counter() - analysis_start
    acts, ppl = report.activations, report.perplexity
    quant = report.quantization_by_method()
    result = DemoResult(
        first_train_loss=losses[0], final_train_loss=final_loss, val_loss=ppl["loss"],
        sink_rate=report.sink["sink_rate"], first_token_mass=report.sink["first_token_mass"],
        sparsity=report.sparsity["sparsity"], max_kurtosis=acts["max_kurtosis"],
        max_abs_activation=acts["max_abs"], quantization=quant, wall_time_s=time.perf_counter() - start,
        train_time_s=train_time, analysis_time_s=analysis_time, sample=sample, out=str(out),
        report=str(out / "analysis" / "report.md"),
    )
    (out / "demo_result.json").write_text(json.dumps({**asdict(result), "options": asdict(options)}, indent=2))
    print(f"validation loss {ppl['loss']:.3f} (perplexity {ppl['perplexity']:.2f}, {ppl['tokens']} tokens)")
    print(f"sink rate {result.sink_rate:.1f}% (first-token attention {result.first_token_mass:.3f}), "
          f"attention sparsity {result.sparsity:.1f}%, max kurtosis {result.max_kurtosis:.1f}, "
          f"max |activation| {result.max_abs_activation:.1f}")
    cells_by_method: dict[str, list[str]] = {}
    cells = report.quantization_cells()  # widths a library lacks show as "not supported"
    for (method, bits), value in sorted(cells.items(), key=lambda item: (item[0][0], -item[0][1])):
        text = value if isinstance(value, str) else f"{value:.2f}" if math.isfinite(value) else "inf"
        cells_by_method.setdefault(method, []).append(f"{bits}-bit {text}")
    for method, texts in cells_by_method.items():
        print(f"perplexity with {method} weights: {', '.join(texts)}")
    print(f"analysis report: {result.report}")
    print(f"wall time {result.wall_time_s:.1f} s (training {train_time:.1f} s, analysis {analysis_time:.1f} s), "
          f"final loss {final_loss:.3f}")
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``softpick demo``."""
    options = parse_args(argv)
    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" would interleave our output
    run(options)
    return 0
