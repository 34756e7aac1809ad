"""--metrics.analysis_freq: the live metrics land in metrics.jsonl, and FSDP / TP log the 1-process values."""

from __future__ import annotations

import pytest
from train_utils import read_metrics, train_args

from softpick.models.probes import LIVE_METRICS
from softpick.train.trainer import main

STEPS = 4
FREQ = ["--metrics.analysis_freq", "2", "--metrics.analysis_samples", "3"]


def live(row: dict) -> dict:
    return {k: v for k, v in row.items() if k.startswith("analysis/")}


@pytest.fixture(scope="module")
def one_process(assets, tmp_path_factory):
    dump = tmp_path_factory.mktemp("live")
    assert main(train_args(assets, dump, *FREQ, "--metrics.log_freq", "3", "--metrics.enable_tensorboard",
                           steps=STEPS)) == 0
    return read_metrics(dump), dump


def test_every_nth_step_logs_the_probes(one_process):
    """Steps 2 and 4 carry every metric, overall and per layer (2 layers), beside the loss, in
    metrics.jsonl and TensorBoard; step 3 is a plain log_freq row."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    one_process, dump = one_process
    assert [r["step"] for r in one_process] == [2, 3, 4]
    events = EventAccumulator(str(dump / "tb" / "rank_0")).Reload()
    assert [e.step for e in events.Scalars("analysis/sink_rate")] == [2, 4]
    assert [e.value for e in events.Scalars("analysis/sparsity/layer_1")] == pytest.approx(
        [r["analysis/sparsity/layer_1"] for r in one_process if r["step"] != 3])
    for row in one_process:
        keys = set(live(row))
        if row["step"] == 3:
            assert not keys
            continue
        assert keys == {f"analysis/{m}" for m in LIVE_METRICS} | {
            f"analysis/{m}/layer_{l}" for m in LIVE_METRICS for l in range(2)}
        assert 0.0 <= row["analysis/sparsity"] <= 100.0 and row["analysis/kurtosis"] > 1.0
        assert row["loss"] is not None


def test_off_by_default_and_loss_unchanged(assets, tmp_path, one_process):
    """The probe leaves training untouched (no RNG, no state): the same losses without it."""
    one_process, _ = one_process
    dump = tmp_path / "plain"
    assert main(train_args(assets, dump, steps=STEPS)) == 0
    rows = read_metrics(dump)
    assert not any(live(r) for r in rows)
    assert [r["loss"] for r in rows if r["step"] in (2, 3, 4)] == [r["loss"] for r in one_process]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("name, flags", [
    ("fsdp", ["--training.batch_size", "2"]),
    ("tp", ["--training.tensor_parallel_degree", "2"]),
])
def test_fsdp_and_tp_log_the_one_process_values(assets, tmp_path, one_process, name, flags):
    from test_distributed import torchrun

    one_process, _ = one_process
    dump = tmp_path / name
    rows = torchrun(train_args(assets, dump, *FREQ, "--metrics.log_freq", "1", steps=STEPS) + flags, dump)
    by_step = {r["step"]: r for r in rows}
    for ref in one_process:
        got = live(by_step[ref["step"]])
        assert got.keys() == live(ref).keys()
        for key, value in live(ref).items():
            assert got[key] == pytest.approx(value, rel=1e-3, abs=1e-4), (name, ref["step"], key)
