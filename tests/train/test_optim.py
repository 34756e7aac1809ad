"""Learning-rate schedule values at the key steps (warmup, peak, stable, end) and AdamW groups."""

from __future__ import annotations

import math

import pytest
import torch

from softpick.train.config import LRScheduler, Optimizer
from softpick.train.optim import build_lr_scheduler, build_optimizer, schedule_phases


def lrs(steps: int, **kw) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_lr_scheduler(opt, LRScheduler(**kw), steps)
    out = []
    for _ in range(steps):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_warmup_then_cosine_to_lr_min():
    out = lrs(100, warmup_steps=10, decay_type="cosine", lr_min=0.1)
    assert out[0] == pytest.approx(1 / 11)
    assert out[9] == pytest.approx(10 / 11)
    assert out[10] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 90)))
    assert out[-1] == pytest.approx(0.1)  # last update uses lr_min
    assert all(a >= b for a, b in zip(out[10:], out[11:]))


@pytest.mark.parametrize("decay_type, mid", [("linear", 0.5), ("sqrt", 1 - math.sqrt(0.5)), ("cosine", 0.5)])
def test_decay_shapes_at_half_way(decay_type, mid):
    out = lrs(20, warmup_steps=0, decay_type=decay_type, lr_min=0.0)
    assert out[9] == pytest.approx(mid)  # step 9 -> progress 10/20


def test_wsd_stable_phase():
    out = lrs(100, warmup_steps=10, decay_ratio=0.2, decay_type="linear", lr_min=0.0)
    assert schedule_phases(LRScheduler(warmup_steps=10, decay_ratio=0.2), 100) == (10, 70, 20)
    assert all(v == 1.0 for v in out[10:80])
    assert out[80] == pytest.approx(1 - 1 / 20) and out[-1] == pytest.approx(0.0)


def test_adamw_settings_and_groups():
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    opt = build_optimizer(params, Optimizer(lr=0.1, eps=1e-15, beta1=0.8, beta2=0.9, weight_decay=0.01),
                          torch.device("cpu"))
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 1
    assert (group["lr"], group["eps"], group["betas"], group["weight_decay"]) == (0.1, 1e-15, (0.8, 0.9), 0.01)
    assert group["foreach"] and not group["fused"]  # fused is CUDA only
