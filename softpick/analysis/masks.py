"""Which attention entries and positions count: causal, and never a padded query or key."""

from __future__ import annotations

import torch

from softpick.analysis.data import Batch


def valid_positions(batch: Batch) -> torch.Tensor:
    """Bool [B, T]: real (non-pad) tokens."""
    return batch.attention_mask.bool()


def first_positions(batch: Batch) -> torch.Tensor:
    """Long [B]: index of each sample's first real token (left padding moves it right)."""
    return valid_positions(batch).int().argmax(dim=-1)


def attention_entries(batch: Batch) -> torch.Tensor:
    """Bool [B, 1, T, T]: key j <= query i, both real tokens (the diagonal counts)."""
    valid = valid_positions(batch)
    T = valid.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
    return (causal[None] & valid[:, :, None] & valid[:, None, :])[:, None]
