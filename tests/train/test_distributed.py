"""Several CPU processes (torchrun, gloo): FSDP2, DDP, TP, HSDP and FSDP+TP give the 1-process losses.

Every document fills exactly one row (see train_utils), so a global batch of 4 rows holds the same
documents whether one rank reads 4 or two ranks read 2 each; the losses then differ only by the
order of floating-point reductions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from train_utils import read_metrics, train_args

from softpick.train.trainer import main

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

EXIT_NOISE = "terminate called without an active exception"
"""gloo's known abort at interpreter exit after all work is done (the trainer ends with os._exit)."""

STEPS = 4


def torchrun(args: list[str], dump, nproc: int = 2, first_step: int = 1) -> list[dict]:
    """Run the trainer under torchrun; return its metrics. Fails on any error other than exit noise."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "softpick.train.trainer", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    output = proc.stdout + proc.stderr
    rows = read_metrics(dump)
    complete = [r["step"] for r in rows] == list(range(first_step, STEPS + 1))
    if proc.returncode != 0:
        # tolerate only gloo's exit-time abort, and only after a complete, error-free run
        noise_only = EXIT_NOISE in output and "Traceback" not in output and "Error" not in output
        assert noise_only and complete, f"torchrun failed (rc {proc.returncode}):\n{output[-4000:]}"
    assert complete, f"incomplete metrics {rows}:\n{output[-4000:]}"
    return rows


@pytest.fixture(scope="module")
def reference(assets, tmp_path_factory):
    dump = tmp_path_factory.mktemp("reference")
    assert main(train_args(assets, dump, steps=STEPS)) == 0
    return read_metrics(dump)


@pytest.mark.parametrize("name, nproc, flags", [
    ("fsdp", 2, ["--training.batch_size", "1", "--training.gradient_accumulation_steps", "2",
                 "--activation_checkpoint.mode", "full"]),
    ("ddp", 2, ["--training.batch_size", "2", "--training.data_parallel_replicate_degree", "2",
                "--training.data_parallel_shard_degree", "1"]),
    ("tp", 2, ["--training.tensor_parallel_degree", "2"]),
    ("hsdp", 4, ["--training.batch_size", "1", "--training.data_parallel_replicate_degree", "2",
                 "--training.data_parallel_shard_degree", "2"]),
    ("fsdp+tp", 4, ["--training.batch_size", "2", "--training.data_parallel_shard_degree", "2",
                    "--training.tensor_parallel_degree", "2"]),
])
def test_several_processes_match_one(assets, tmp_path, reference, name, nproc, flags):
    dump = tmp_path / name
    args = train_args(assets, dump, steps=STEPS)
    checkpoints = ["--checkpoint.enable_checkpoint", "--checkpoint.interval", "2", "--checkpoint.async_mode", "async"]
    rows = torchrun(args + flags + (checkpoints if name == "fsdp" else []), dump, nproc=nproc)
    for ref, got in zip(reference, rows):
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-4), (name, ref["step"])
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-3), (name, ref["step"])
    assert rows[-1]["tokens"] == reference[-1]["tokens"]
    if name == "fsdp":
        assert sorted(p.name for p in (dump / "checkpoint").iterdir()) == ["step-2", "step-4"]
        assert (dump / "hf" / "model.safetensors").is_file()
        # resume the sharded step-2 checkpoint in a fresh folder: steps 3 and 4 repeat exactly
        resumed = tmp_path / "resumed"
        shutil.copytree(dump / "checkpoint" / "step-2", resumed / "checkpoint" / "step-2")
        torchrun(train_args(assets, resumed, steps=STEPS) + flags + ["--checkpoint.enable_checkpoint",
                                                                     "--checkpoint.interval", "2"], resumed,
                 first_step=3)
        assert [r["loss"] for r in read_metrics(resumed)] == [r["loss"] for r in rows[2:]]


def test_tensor_parallel_shards_the_variant_parameters(assets, tmp_path):
    """Sinks, SSMax scales (per head) and the elementwise output gate under TP 2 give the 1-process losses."""
    args = lambda dump: [a if a != str(assets["model"]) else str(assets["variants"])  # noqa: E731
                         for a in train_args(assets, dump, steps=STEPS)]
    assert main(args(tmp_path / "one")) == 0
    reference = read_metrics(tmp_path / "one")
    rows = torchrun(args(tmp_path / "tp") + ["--training.tensor_parallel_degree", "2"], tmp_path / "tp")
    for ref, got in zip(reference, rows):
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-4), ref["step"]
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-3), ref["step"]
