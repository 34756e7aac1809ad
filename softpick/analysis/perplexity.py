"""Perplexity: exp of the mean next-token cross-entropy over every real (non-pad) target.

A target token t counts when both t and t - 1 are real tokens. Summed negative log-likelihood and
token counts are accumulated over batches and divided once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from softpick.errors import BadValue
from softpick.analysis.collect import run_pass
from softpick.analysis.data import Batch
from softpick.analysis.masks import valid_positions


class PerplexityObserver:
    def __init__(self):
        self.nll = 0.0
        self.tokens = 0

    def on_logits(self, logits: torch.Tensor, batch: Batch) -> None:
        valid = valid_positions(batch)
        counted = valid[:, 1:] & valid[:, :-1]  # [B, T-1]
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # [B, T-1, V]
        nll = -logp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)  # [B, T-1]
        self.nll += float(nll[counted].double().sum())
        self.tokens += int(counted.sum())

    def result(self) -> dict:
        if self.tokens == 0:
            raise BadValue("no target token to score: every sample needs at least two real tokens.")
        loss = self.nll / self.tokens
        return {"loss": loss, "perplexity": math.exp(loss), "tokens": self.tokens}


def compute_perplexity(model: nn.Module, batches: list[Batch], *, progress: bool = False, desc: str = "perplexity") -> dict:
    """Returns ``{"loss": mean NLL in nats, "perplexity": exp(loss), "tokens": scored targets}``."""
    observer = PerplexityObserver()
    run_pass(model, batches, [observer], progress=progress, desc=desc)
    return observer.result()
