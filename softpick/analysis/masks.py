"""Which attention entries and positions of a :class:`Batch` count: causal, and never a padded query or
key (the definitions live in :mod:`softpick.models.probes`, shared with the live metrics of training)."""

from __future__ import annotations

import torch

from softpick.analysis.data import Batch
from softpick.models import probes


def valid_positions(batch: Batch) -> torch.Tensor:
    """Bool [B, T]: real (non-pad) tokens."""
    return probes.valid_positions(batch.attention_mask)


def first_positions(batch: Batch) -> torch.Tensor:
    """Long [B]: index of each sample's first real token (left padding moves it right)."""
    return probes.first_positions(batch.attention_mask)


def attention_entries(batch: Batch) -> torch.Tensor:
    """Bool [B, 1, T, T]: key j <= query i, both real tokens (the diagonal counts)."""
    return probes.attention_entries(batch.attention_mask)
