"""AdamW and the warmup / stable / decay learning-rate schedule (flame and torchtitan semantics)."""

from __future__ import annotations

import functools
import logging
import math

import torch

from softpick.train.config import LRScheduler, Optimizer

logger = logging.getLogger("softpick.train")


def build_optimizer(params: list[torch.nn.Parameter], cfg: Optimizer, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over ``params`` (weight decay on all of them, like torchtitan).

    ``implementation``: ``fused`` on CUDA uses the fused kernel and falls back to ``foreach`` elsewhere;
    ``foreach`` batches the update over tensors; ``for-loop`` is the plain reference. Parameters are
    put in one group per device mesh (plain tensors apart from DTensors, e.g. TP without FSDP), since
    the fused and foreach kernels cannot mix them.
    """
    groups: dict[int | None, list[torch.nn.Parameter]] = {}
    for p in params:
        mesh = getattr(p, "device_mesh", None)
        groups.setdefault(id(mesh) if mesh is not None else None, []).append(p)
    param_groups = [{"params": group} for group in groups.values()]
    kwargs = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    fused = cfg.implementation == "fused" and device.type == "cuda"
    kwargs["fused"] = fused
    kwargs["foreach"] = not fused and cfg.implementation != "for-loop"
    if cfg.name == "Adam":
        return torch.optim.Adam(param_groups, **kwargs)
    return torch.optim.AdamW(param_groups, **kwargs)


def lr_factor(
    step: int, *, warmup_steps: int, stable_steps: int, decay_steps: int, decay_type: str, lr_min: float
) -> float:
    """Multiplier of the peak lr for 0-indexed ``step`` (the update about to happen).

    Warmup: (step+1)/(warmup_steps+1), so the first update uses a small but non-zero lr. Stable: 1.
    Decay over ``decay_steps`` with progress p in (0, 1]: linear 1-p, sqrt 1-sqrt(p), cosine
    (1+cos(pi p))/2, rescaled to end at ``lr_min`` (a ratio of the peak lr).
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if step < warmup_steps + stable_steps:
        return 1.0
    progress = min((step + 1 - warmup_steps - stable_steps) / max(decay_steps, 1), 1.0)
    if decay_type == "linear":
        shape = 1.0 - progress
    elif decay_type == "sqrt":
        shape = 1.0 - math.sqrt(progress)
    elif decay_type == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"decay_type must be linear, sqrt or cosine, got {decay_type!r}.")
    return lr_min + (1.0 - lr_min) * shape


def schedule_phases(cfg: LRScheduler, steps: int) -> tuple[int, int, int]:
    """(warmup, stable, decay) step counts for a run of ``steps`` updates.

    Without ``decay_ratio`` the decay starts right after warmup. With it, the last
    round(steps * decay_ratio) steps decay (WSD) and warmup is shortened if the two overlap.
    """
    warmup = min(cfg.warmup_steps, steps)
    if cfg.decay_ratio is None:
        return warmup, 0, steps - warmup
    decay = round(steps * cfg.decay_ratio)
    warmup = min(warmup, steps - decay)
    return warmup, steps - warmup - decay, decay


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: LRScheduler, steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per update; its state (last_epoch) goes into checkpoints."""
    warmup, stable, decay = schedule_phases(cfg, steps)
    if warmup < cfg.warmup_steps:  # as torchtitan warns when warmup exceeds the run
        logger.warning("lr_scheduler.warmup_steps (%d) does not fit in training.steps (%d)%s: warmup is cut to "
                       "%d steps.", cfg.warmup_steps, steps, " with its decay phase" if cfg.decay_ratio else "",
                       warmup)
    fn = functools.partial(
        lr_factor, warmup_steps=warmup, stable_steps=stable, decay_steps=decay,
        decay_type=cfg.decay_type, lr_min=cfg.lr_min,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
