"""``softpick demo``: train a tiny softpick model on the embedded corpus, offline, on the CPU.

Usage::

    softpick demo                          # ~80 s on one idle core, saves to outputs/demo-softpick
    softpick demo --attn-type softmax --out outputs/demo-softmax   # the softmax baseline

Steps: train (or load from cache) the byte-level BPE tokenizer of :mod:`softpick.corpus`; cut the
tokenized corpus into rows of ``--seq-len`` tokens, each starting with ``<s>`` (documents are joined
by ``</s>``); train a 4-layer, 128-wide :class:`~softpick.models.SoftpickForCausalLM` with AdamW and
linear warmup + cosine decay in a plain PyTorch loop; report the validation loss before and after;
save model and tokenizer with ``save_pretrained``; print a greedy sample generated with the KV cache.
The run is deterministic for a given ``--seed`` and ``--threads``. It uses one thread by default: the
matrices are too small for a second thread to gain much, and with more threads than free cores
(another job running) PyTorch's thread pool slows down several-fold.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from tqdm import tqdm

from softpick.corpus import embedded_documents, embedded_tokenizer
from softpick.models import ATTN_TYPES, SoftpickConfig, SoftpickForCausalLM

PROMPT = "Once upon a time, there was a little girl named"


@dataclass
class DemoOptions:
    """Settings of one demo run (the command-line flags)."""

    steps: int = 300
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 3e-3
    out: str = "outputs/demo-softpick"
    attn_type: str = "softpick"
    seed: int = 0
    threads: int = 1  # the model is too small to gain much from more, and loses a lot when cores are busy
    hidden_size: int = 128
    num_layers: int = 4
    val_rows: int | None = None  # validation rows to evaluate; None = the whole validation split
    max_new_tokens: int = 48
    progress: bool = True


@dataclass
class DemoResult:
    """What a demo run measured. Losses are mean cross-entropy per token, in nats."""

    val_loss_before: float
    val_loss_after: float
    final_train_loss: float  # mean of the last 10 steps
    wall_time_s: float  # whole run: tokenizer, data, training, evaluation, saving and sampling
    train_time_s: float  # the optimisation loop alone
    sample: str
    out: str


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
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    args = p.parse_args(argv)
    for name in ("steps", "seq_len", "batch_size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if args.seq_len < 2:
        p.error(f"--seq-len must be at least 2 (one token to predict from <s>), got {args.seq_len}.")
    if not args.lr > 0:
        p.error(f"--lr must be positive, got {args.lr}.")
    return DemoOptions(**vars(args))


def token_rows(tokenizer, documents: list[str], seq_len: int) -> torch.Tensor:
    """[N, seq_len] int64 rows: ``<s>`` then seq_len - 1 tokens of the documents joined by ``</s>``."""
    stream: list[int] = []
    for ids in tokenizer(documents, add_special_tokens=False).input_ids:
        stream += ids + [tokenizer.eos_token_id]
    body = seq_len - 1
    n = len(stream) // body
    if n == 0:
        raise ValueError(f"seq_len {seq_len} is longer than the {len(stream)} tokens of the documents.")
    rows = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)  # [N, seq_len - 1]
    bos = torch.full((n, 1), tokenizer.bos_token_id, dtype=torch.long)
    return torch.cat([bos, rows], dim=1)  # [N, seq_len]


def build_model(tokenizer, options: DemoOptions) -> SoftpickForCausalLM:
    """A 4-layer, 128-wide model (about 1.3M parameters with the demo's ~2k-token vocabulary)."""
    config = SoftpickConfig(
        vocab_size=len(tokenizer),
        hidden_size=options.hidden_size,
        intermediate_size=options.hidden_size * 3,
        num_hidden_layers=options.num_layers,
        num_attention_heads=options.hidden_size // 32,
        max_position_embeddings=max(512, options.seq_len),
        initializer_range=0.02,
        attn_type=options.attn_type,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return SoftpickForCausalLM(config)


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """LR multiplier: linear 1/warmup .. 1 over ``warmup`` steps, then cosine down to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model: SoftpickForCausalLM, rows: torch.Tensor, batch_size: int) -> float:
    """Mean next-token cross-entropy (nats) over ``rows`` [N, T] (every row has the same length)."""
    model.eval()
    losses = [model(input_ids=batch, labels=batch).loss for batch in rows.split(batch_size)]
    weights = torch.tensor([len(batch) for batch in rows.split(batch_size)], dtype=torch.float)
    return float((torch.stack(losses) * weights).sum() / weights.sum())


def run(options: DemoOptions) -> DemoResult:
    """Train, evaluate, save and sample (see the module docstring); sets torch's thread count."""
    start = time.perf_counter()
    torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    tokenizer = embedded_tokenizer()
    train_rows = token_rows(tokenizer, embedded_documents("train"), options.seq_len)
    val_rows = token_rows(tokenizer, embedded_documents("validation"), options.seq_len)[: options.val_rows]
    model = build_model(tokenizer, options)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"softpick demo: {options.attn_type} attention, {n_params / 1e6:.2f}M parameters, "
        f"vocab {len(tokenizer)}, {len(train_rows)} train rows of {options.seq_len} tokens, "
        f"{options.steps} steps of {options.batch_size} rows, {options.threads} thread(s)"
    )
    val_before = evaluate(model, val_rows, options.batch_size)
    print(f"validation loss before training: {val_before:.3f}")

    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, options.steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, options.steps, warmup)
    )
    order = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(options.seed))
    losses: list[float] = []
    model.train()
    train_start = time.perf_counter()
    bar = tqdm(range(options.steps), desc="train", disable=not options.progress, mininterval=0.5)
    for step in bar:
        index = torch.arange(step * options.batch_size, (step + 1) * options.batch_size) % len(order)
        batch = train_rows[order[index]]  # [batch_size, seq_len]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{scheduler.get_last_lr()[0]:.1e}", refresh=False)
    bar.close()
    train_time = time.perf_counter() - train_start
    final_loss = sum(losses[-10:]) / len(losses[-10:])

    val_after = evaluate(model, val_rows, options.batch_size)
    print(f"validation loss after training:  {val_after:.3f}  (final training loss {final_loss:.3f})")

    out = Path(options.out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    prompt = tokenizer(PROMPT, return_tensors="pt")
    generated = model.generate(
        **prompt, max_new_tokens=options.max_new_tokens, do_sample=False, use_cache=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    sample = tokenizer.decode(generated[0], skip_special_tokens=True)
    wall = time.perf_counter() - start
    result = DemoResult(val_before, val_after, final_loss, wall, train_time, sample, str(out))
    (out / "demo_result.json").write_text(json.dumps({**asdict(result), "options": asdict(options)}, indent=2))
    print(f"saved model and tokenizer to {out}/")
    print(f"sample: {sample}")
    print(f"wall time {wall:.1f} s (training {train_time:.1f} s), final loss {final_loss:.3f}")
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``softpick demo``."""
    options = parse_args(argv)
    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" would interleave our output
    run(options)
    return 0
