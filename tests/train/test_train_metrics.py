"""FLOPs per token (causal and varlen), the peak table, and the MFU guard."""

from __future__ import annotations

import json

import pytest
import torch

from softpick.train.config import JobConfig
from softpick.train.metrics import MetricsLogger, Throughput, attention_span, flops_per_token, peak_flops


def test_flops_per_token_causal_attention():
    # 24 layers, 16 heads of 64, T = 4096: attention 6 * L * H * D * T (half of torchtitan's 12 * ... )
    assert flops_per_token(300_000_000, 24, 16, 64, 4096) == 6 * 300e6 + 6 * 24 * 16 * 64 * 4096


def test_attention_span_fixed_and_varlen():
    assert attention_span({"input_ids": torch.zeros(2, 8, dtype=torch.long)}) == 8
    batch = {"input_ids": torch.zeros(1, 8, dtype=torch.long), "cu_seqlens": torch.tensor([0, 4, 8])}
    assert attention_span(batch) == (16 + 16) / 8  # two documents of 4: half the work of one of 8


def test_peak_flops_override_and_cpu():
    assert peak_flops(torch.device("cpu"), None) is None
    assert peak_flops(torch.device("cpu"), 1e12) == 1e12


def test_throughput_and_mfu_guard(tmp_path):
    tp = Throughput(lambda span: 1e9, peak=1.0, split=2)
    tp.add({"input_ids": torch.zeros(1, 10, dtype=torch.long)})
    report = tp.report()
    assert report["mfu"] > 1  # a wrong (tiny) peak
    logger = MetricsLogger(JobConfig().metrics, tmp_path, rank=0, total_steps=1, start_step=0, job_config=JobConfig())
    logger.log(1, {"loss": 1.0, **report})
    logger.close()
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row["mfu"] is None and row["loss"] == 1.0  # never reported above 100%


@pytest.mark.parametrize("split", [1, 4])
def test_tensor_parallel_split_divides_per_device_rates(split):
    tp = Throughput(lambda span: 2.0, peak=None, split=split)
    tp.add({"input_ids": torch.zeros(1, 1000, dtype=torch.long)})
    tp.start -= 1.0  # pretend one second passed
    report = tp.report()
    assert report["tps"] == pytest.approx(1000 / split, rel=0.05)
