"""Helpers for the trainer tests: a word-level tokenizer, fixed-length documents, tiny model configs.

Every document is ``DOC_WORDS`` words, so with BOS and EOS it is exactly ``SEQ_LEN`` tokens and each
row of a batch is one whole document: the global batch is then the same set of documents whatever
the number of data-parallel ranks, which lets 1- and 2-process runs be compared step by step.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

import softpick.train.trainer as trainer

SEQ_LEN = 32
DOC_WORDS = SEQ_LEN - 2
VOCAB_WORDS = 60


def make_tokenizer(out_dir: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    vocab.update({f"w{i}": i + 4 for i in range(VOCAB_WORDS)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>", pad_token="<pad>")
    tok.save_pretrained(str(out_dir))
    return out_dir


def make_docs(path: Path, n: int, seed: int, words: range = range(VOCAB_WORDS)) -> Path:
    """``n`` distinct documents of DOC_WORDS words: two id words, then a learnable pattern (counting up
    with a random start and stride)."""
    rng = random.Random(seed)
    lo, span = words.start, len(words)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            start, stride = rng.randrange(span), rng.randrange(1, 4)
            ids = [i // span % span, i % span] + [(start + stride * j) % span for j in range(DOC_WORDS - 2)]
            f.write(json.dumps({"text": " ".join(f"w{lo + k}" for k in ids)}) + "\n")
    return path


def model_config(path: Path, model_type: str = "softpick_transformer", **fields) -> Path:
    cfg = {"model_type": model_type, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
           "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 64 + 4,
           "max_position_embeddings": 128, "initializer_range": 0.02}
    if model_type == "softpick_transformer":
        cfg["attn_impl"] = "naive"
    path.write_text(json.dumps({**cfg, **fields}))
    return path


def train_args(assets: dict[str, Path], dump: Path, *extra: str, steps: int = 6) -> list[str]:
    """Flags of a tiny CPU run (fixed documents, word tokenizer, checkpoints on)."""
    return [
        "--model.config", str(assets["model"]), "--model.tokenizer_path", str(assets["tokenizer"]),
        "--training.dataset", "json", "--training.data_files", str(assets["docs"]),
        "--training.seq_len", str(SEQ_LEN), "--training.context_len", str(SEQ_LEN),
        "--training.batch_size", "4", "--training.steps", str(steps), "--training.seed", "7",
        "--optimizer.lr", "3e-3", "--lr_scheduler.warmup_steps", "2", "--lr_scheduler.decay_type", "cosine",
        "--metrics.log_freq", "1", "--job.dump_folder", str(dump), *extra,
    ]


def read_metrics(dump: Path) -> list[dict]:
    path = dump / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def nan_grad_norm_from_call(n: int, monkeypatch) -> None:
    """From the n-th call on, the trainer's gradient clipping reports a NaN norm (the gradients stay real)."""
    real, calls = trainer.clip_grad_norm_, []

    def fake(params, max_norm):
        calls.append(1)
        norm = real(params, max_norm)
        return torch.full_like(norm, float("nan")) if len(calls) >= n else norm

    monkeypatch.setattr(trainer, "clip_grad_norm_", fake)
