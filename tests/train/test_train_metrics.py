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


def test_a_resumed_run_writes_each_step_once(tmp_path):
    """Steps logged after the checkpoint a run resumes from are dropped, then logged again once."""
    config = JobConfig()
    first = MetricsLogger(config.metrics, tmp_path, rank=0, total_steps=6, start_step=0, job_config=config)
    for step in range(1, 6):  # checkpoint at step 3, then steps 4 and 5 before a crash
        first.log(step, {"loss": float(step)})
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # a row cut by the crash
    resumed = MetricsLogger(config.metrics, tmp_path, rank=0, total_steps=6, start_step=3, job_config=config)
    for step in range(4, 7):
        resumed.log(step, {"loss": 10.0 + step})
    resumed.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows] == [1.0, 2.0, 3.0, 14.0, 15.0, 16.0]


@pytest.fixture
def no_wandb_login(tmp_path, monkeypatch):
    """An environment where wandb has no key: no WANDB_* variables, an empty home."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_wandb_without_a_login_is_one_line_naming_the_fixes(no_wandb_login, monkeypatch):
    pytest.importorskip("wandb")
    from softpick.train.config import ConfigError
    from softpick.train.metrics import check_wandb

    with pytest.raises(ConfigError) as info:
        check_wandb()
    message = str(info.value)
    assert "\n" not in message and "wandb login" in message and "WANDB_MODE=offline" in message
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_wandb()
    monkeypatch.delenv("WANDB_MODE")
    no_wandb_login.mkdir()
    (no_wandb_login / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    (no_wandb_login / ".netrc").chmod(0o600)
    check_wandb()  # what `wandb login` writes


def test_train_with_wandb_and_no_login_stops_at_start_up(no_wandb_login, tmp_path, capsys):
    pytest.importorskip("wandb")
    from softpick.train.trainer import main

    code = main(["--metrics.enable_wandb", "--job.dump_folder", str(tmp_path / "run"), "--training.steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "wandb login" in err[0] and "WANDB_MODE=offline" in err[0], err
    assert not (tmp_path / "run" / "hf").exists()


def test_wandb_run_name_is_the_description_or_the_dump_folder():
    from softpick.train.config import from_dict
    from softpick.train.metrics import wandb_run_name

    assert wandb_run_name(from_dict({"job": {"dump_folder": "exp/softpick-340M"}})) == "softpick-340M"
    assert wandb_run_name(from_dict({"job": {"dump_folder": "exp/x", "description": "ablation 3"}})) == "ablation 3"
