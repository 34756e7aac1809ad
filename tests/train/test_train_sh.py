"""train.sh as a user runs it: the workers' exit code passes torchrun (docs/faults.md), their one-line error
comes last, and a shell without softpick is one line.

softpick.train.launch (what train.sh execs) runs torchrun's ``main`` in-process; most cases replace that
``main`` with a stand-in that fails as torchrun does (a ``ChildFailedError`` after the worker wrote
``$SOFTPICK_EXIT_FILE``, or a ``SignalException``); one slow case runs the real torchrun.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed.run
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from softpick.errors import record_for_launcher
from softpick.train import launch

ROOT = Path(__file__).resolve().parents[2]
TRAIN_SH = ROOT / "train.sh"


def fake_torchrun(monkeypatch, worker_code: int | None, line: str = "", *, signalled: bool = False):
    """torchrun's main replaced: a worker that records (code, line) unless worker_code is None, then fails."""
    def main(argv=None):
        if worker_code is not None:
            record_for_launcher(line, worker_code)
            record_for_launcher("softpick train: a later worker.", 9)  # the first one to end wins
        if signalled:
            raise SignalException("got SIGTERM", signal.SIGTERM)
        failure = ProcessFailure(local_rank=0, pid=1, exitcode=worker_code or 1, error_file="/nonexistent")
        raise ChildFailedError(name="softpick.train.trainer", failures={0: failure})

    monkeypatch.setattr(torch.distributed.run, "main", main)


@pytest.mark.parametrize("code", [2, 3, 4, 75])
def test_the_workers_exit_code_and_line_come_last(monkeypatch, capsys, tmp_path, code):
    line = f"softpick train: stopped with {code}."
    fake_torchrun(monkeypatch, code, line)
    folders = []
    monkeypatch.setattr(launch.tempfile, "mkdtemp", lambda prefix: folders.append(tmp_path / prefix) or
                        (tmp_path / prefix).mkdir() or str(tmp_path / prefix))
    assert launch.main([]) == code
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [line]  # no torchrun traceback
    assert folders and not folders[0].exists() and "SOFTPICK_EXIT_FILE" not in os.environ  # cleaned up


def test_sigterm_to_torchrun_passes_the_workers_75(monkeypatch, capsys):
    line = "softpick train: stopped by SIGTERM after step 4; checkpoint .../step-4 written, rerun the same command."
    fake_torchrun(monkeypatch, 75, line, signalled=True)
    assert launch.main([]) == 75 and capsys.readouterr().err.strip().splitlines()[-1] == line
    fake_torchrun(monkeypatch, None, signalled=True)  # the workers did not get to report
    assert launch.main([]) == 128 + signal.SIGTERM and "SIGTERM" in capsys.readouterr().err


def test_a_bug_keeps_torchruns_summary_and_the_workers_code(monkeypatch, capsys):
    fake_torchrun(monkeypatch, None)
    assert launch.main([]) == 1
    assert "softpick.train.trainer FAILED" in capsys.readouterr().err


def test_without_softpick_on_path_one_line_says_to_activate(tmp_path):
    env = {**os.environ, "PATH": "/usr/bin:/bin", "PYTHONPATH": ""}
    result = subprocess.run(["bash", str(TRAIN_SH)], env=env, capture_output=True, text=True, timeout=30,
                            cwd=tmp_path)
    assert result.returncode == 127
    assert len(result.stderr.strip().splitlines()) == 1 and ". .venv/bin/activate" in result.stderr


def test_train_sh_execs_the_launcher():
    """exec: train.sh's process becomes the launcher, so SIGTERM/Ctrl-C reach torchrun as they always did."""
    assert "exec python -m softpick.train.launch " in TRAIN_SH.read_text()


def test_record_for_launcher_writes_torchruns_error_file_and_the_exit_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))
    monkeypatch.setenv("SOFTPICK_EXIT_FILE", str(tmp_path / "exit"))
    record_for_launcher("softpick train: first.", 3)
    record_for_launcher("softpick train: second.", 2)  # another worker: the first one's stays
    assert (tmp_path / "exit").read_text() == "3\nsoftpick train: first.\n"
    message = json.loads((tmp_path / "error.json").read_text())["message"]
    assert message["message"] == "softpick train: second."
    assert message["extraInfo"]["py_callstack"] == message["message"]


def test_the_docs_say_to_activate_the_environment():
    for doc in ("README.md", "docs/train.md"):
        assert ". .venv/bin/activate" in (ROOT / doc).read_text(), doc


@pytest.mark.slow
def test_torchrun_user_error_exits_2_with_the_line_last(tmp_path):
    """The real torchrun (one CPU process): a bad flag exits 2, not 1, with no torchrun traceback."""
    env = {**os.environ, "NGPU": "1", "MASTER_PORT": "29631",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(TRAIN_SH), "--training.steps", "abc", "--job.dump_folder",
                             str(tmp_path / "dump")], env=env, capture_output=True, text=True, timeout=240,
                            cwd=tmp_path)
    line = "softpick train: bad value for training.steps: invalid literal for int() with base 10: 'abc'."
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == line
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) < 8, result.stderr
