"""Session fixtures of the hostile suite: the tiny CPU run of tests/train (trained once) and its inputs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))

from train_utils import make_docs, make_tokenizer, model_config, train_args  # noqa: E402

CKPT = ("--checkpoint.enable_checkpoint", "--checkpoint.interval", "2")


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile_inputs")
    return {"tokenizer": make_tokenizer(root / "tokenizer"), "docs": make_docs(root / "docs.jsonl", 200, seed=0),
            "model": model_config(root / "softpick.json")}


@pytest.fixture(scope="session")
def finished(inputs, tmp_path_factory) -> Path:
    """A finished 4-step run: checkpoints step-2 and step-4, hf/, metrics.jsonl, run.lock. Never changed:
    tests that write take :func:`a_run`."""
    from softpick.train.trainer import main

    dump = tmp_path_factory.mktemp("hostile_run") / "run"
    assert main(train_args(inputs, dump, *CKPT, steps=4)) == 0
    return dump


@pytest.fixture
def a_run(finished, tmp_path) -> Path:
    """A private copy of the finished run."""
    dump = tmp_path / "run"
    shutil.copytree(finished, dump)
    return dump


@pytest.fixture
def args(inputs):
    """``args(dump, *extra, steps=4)``: the flags of the tiny CPU run."""
    return lambda dump, *extra, steps=4: train_args(inputs, dump, *extra, steps=steps)


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(bytes)``: a folder on a tmpfs of that size (needs root and mount; skipped otherwise)."""
    mounts = []

    def make(size: int) -> Path:
        mnt = tmp_path / f"disk{len(mounts)}"
        mnt.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                                               capture_output=True).returncode != 0:
            pytest.skip("a small tmpfs needs root and mount (the ENOSPC variant with a fake writer runs instead)")
        mounts.append(mnt)
        return mnt

    yield make
    for mnt in mounts:
        subprocess.run(["umount", "-l", str(mnt)], check=True)
