"""``--metrics.analysis_freq N``: the paper's measurements, live, every N steps of training.

Every N steps the model runs one forward (no gradient, eval mode, the training autocast) on a fixed
held-out batch and logs, per layer and over all layers, the sink rate, the first-token attention mass,
the attention sparsity, max |activation| and the hidden-state kurtosis: the definitions and the code
of ``softpick analyze`` (:mod:`softpick.models.probes`). Keys ``analysis/NAME`` and
``analysis/NAME/layer_l`` go into the same metrics.jsonl row, TensorBoard and wandb as the loss.

The held-out batch is ``metrics.analysis_samples`` documents, each cut to its first ``seq_len``
tokens (``context_len`` with varlen) and padded on the right, so every sample starts at a document
start, where sinks form: the embedded corpus's validation split when training on the embedded corpus;
a pre-tokenized dataset's ``validation`` split when it has one; else the first documents of the
training dataset (documents training also sees). Every rank builds the same batch and runs the
forward (FSDP's all-gathers need every rank); under tensor parallel the head sums are all-gathered
over the TP group; rank 0 logs.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
from torch import nn

from softpick.corpus.tokenized import TokenizedDocuments, encode_documents
from softpick.models.probes import merge_heads, probe_layers, summarize
from softpick.train.config import Training

PREFIX = "analysis/"


def held_out_documents(cfg: Training, tokenizer: Any, n: int, seed: int) -> tuple[list[np.ndarray], str]:
    """(token ids [BOS] ... [EOS] of ``n`` documents, where they come from)."""
    from softpick.train.data import load_documents

    if not cfg.dataset:
        from softpick.corpus import embedded_documents

        return encode_documents(tokenizer, embedded_documents("validation", n)), "the embedded corpus's validation split"
    docs = load_documents(cfg, seed)
    if isinstance(docs, TokenizedDocuments):
        if "validation" in docs.meta["splits"]:
            docs, where = TokenizedDocuments(docs.folder, "validation"), f"{cfg.dataset} (validation split)"
        else:
            where = f"the first documents of {cfg.dataset} (no validation split: training sees them too)"
        return [docs.take([i])[0] for i in range(min(n, len(docs)))], where
    texts = docs[:n]["text"] if hasattr(docs, "__len__") else [row["text"] for row in itertools.islice(docs, n)]
    return encode_documents(tokenizer, list(texts)), f"the first documents of {cfg.dataset} (training sees them too)"


def pad_batch(docs: list[np.ndarray], length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` (1 = real), ``position_ids`` [B, T]: each document's first
    ``length`` tokens, right-padded to the longest of them."""
    rows = [torch.as_tensor(np.asarray(d[:length], dtype=np.int64)) for d in docs if len(d) >= 2]
    if not rows:
        raise ValueError("the held-out batch for metrics.analysis_freq has no document of two tokens or more.")
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return {"input_ids": ids, "attention_mask": mask, "position_ids": torch.arange(T).expand(len(rows), T).clone()}


class LiveAnalysis:
    """Runs the probes on the held-out batch; ``__call__(model, autocast)`` returns the metrics to log."""

    def __init__(self, cfg: Training, tokenizer: Any, *, samples: int, seed: int, device: torch.device,
                 tp_group=None):
        docs, self.source = held_out_documents(cfg, tokenizer, samples, seed)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        length = cfg.context_len if cfg.varlen else cfg.seq_len
        self.batch = {k: v.to(device) for k, v in pad_batch(docs, length, pad_id).items()}
        self.device, self.tp_group = device, tp_group

    def __call__(self, model: nn.Module, autocast: Any) -> dict[str, float]:
        with autocast:
            layers = probe_layers(model, **self.batch)
        layers = merge_heads(layers, self.tp_group, self.device)
        return {PREFIX + k: v for k, v in summarize(layers).items()}
