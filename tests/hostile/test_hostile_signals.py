"""Ctrl-C and SIGTERM outside the training loop: one line, nothing of the dump folder changed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile_utils import error_lines, refused, tree_hashes

import softpick.train.trainer as trainer_mod

ROOT = Path(__file__).resolve().parents[2]


def test_ctrl_c_during_start_up_is_one_line(a_run, args, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod, "build_loader", interrupted)
    refused(capsys, ["train", *args(a_run, "--checkpoint.enable_checkpoint", steps=6)], 130, "interrupted (SIGINT)",
            keep=(a_run,))
    monkeypatch.setattr("softpick.train.convert.pick_checkpoint", interrupted)
    refused(capsys, ["convert", "dcp-to-hf", "--path", a_run], 130, "interrupted (SIGINT)", keep=(a_run,))


@pytest.mark.slow
def test_sigint_to_a_starting_process(a_run, args):
    """A real SIGINT 2 s after start (imports, model build): exit 130 (or 75 when it already trains), one line."""
    before = tree_hashes(a_run)
    cmd = [sys.executable, "-m", "softpick.cli", "train", *args(a_run, "--checkpoint.enable_checkpoint", steps=6)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=300)[1]
    lines = error_lines(err)
    assert proc.returncode in (130, 75) and "Traceback" not in err and len(lines) == 1, err[-3000:]
    if proc.returncode == 130:
        assert tree_hashes(a_run) == before
