"""train.sh as a user runs it: torchrun's exit code 1 becomes the worker's (docs/faults.md), the one-line
error comes last, a missing torchrun is one line, and SIGTERM reaches torchrun.

Most cases put a stand-in ``torchrun`` first on PATH (a shell script that behaves as torchrun does when
its worker ends: exit 1 after the worker wrote SOFTPICK_EXIT_FILE); one slow case runs the real torchrun.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRAIN_SH = ROOT / "train.sh"


def fake_torchrun(folder: Path, body: str) -> dict:
    """An environment whose PATH starts with ``folder`` holding a ``torchrun`` script running ``body``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "torchrun"
    script.write_text("#!/usr/bin/env bash\n" + body + "\n")
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "NGPU": "1"}


@pytest.mark.parametrize("code", [2, 3, 4, 75])
def test_the_workers_exit_code_and_line_come_last(tmp_path, code):
    line = f"softpick train: stopped with {code}."
    env = fake_torchrun(tmp_path / "bin", f'echo "{line}" >&2\nprintf "{code}\\n{line}\\n" > "$SOFTPICK_EXIT_FILE"\n'
                                          'echo "torchrun: ChildFailedError summary" >&2\nexit 1')
    env["TMPDIR"] = str(tmp_path)
    result = subprocess.run(["bash", str(TRAIN_SH), "--training.steps", "1"], env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == code
    assert result.stderr.strip().splitlines()[-1] == line
    assert not list(tmp_path.glob("softpick-exit.*"))  # the exit file is removed


def test_a_bug_keeps_torchruns_exit_code(tmp_path):
    env = fake_torchrun(tmp_path / "bin", "echo Traceback >&2\nexit 1")
    result = subprocess.run(["bash", str(TRAIN_SH)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == "Traceback"


def test_sigterm_reaches_torchrun_and_its_code_passes(tmp_path):
    started = tmp_path / "started"
    env = fake_torchrun(tmp_path / "bin", f'''
trap 'printf "75\\nsoftpick train: stopped by SIGTERM.\\n" > "$SOFTPICK_EXIT_FILE"; exit 1' TERM
touch {started}
while true; do sleep 0.1; done''')
    proc = subprocess.Popen(["bash", str(TRAIN_SH)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 75 and err.strip().splitlines()[-1] == "softpick train: stopped by SIGTERM."


def test_without_torchrun_on_path_one_line_says_to_activate(tmp_path):
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    result = subprocess.run(["bash", str(TRAIN_SH)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 127
    assert len(result.stderr.strip().splitlines()) == 1 and ". .venv/bin/activate" in result.stderr


def test_record_for_launcher_writes_torchruns_error_file_and_the_exit_file(tmp_path, monkeypatch):
    from softpick.errors import record_for_launcher

    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))
    monkeypatch.setenv("SOFTPICK_EXIT_FILE", str(tmp_path / "exit"))
    record_for_launcher("softpick train: first.", 3)
    record_for_launcher("softpick train: second.", 2)  # another worker: the first one's stays
    assert (tmp_path / "exit").read_text() == "3\nsoftpick train: first.\n"
    message = json.loads((tmp_path / "error.json").read_text())["message"]
    assert message["message"] == "softpick train: second."
    assert message["extraInfo"]["py_callstack"] == message["message"]


@pytest.mark.slow
def test_torchrun_user_error_exits_2_with_the_line_last(tmp_path):
    """The real torchrun (one CPU process): a bad flag exits 2, not 1, and torchrun's summary names it."""
    env = {**os.environ, "NGPU": "1", "MASTER_PORT": "29631",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(TRAIN_SH), "--training.steps", "abc", "--job.dump_folder",
                             str(tmp_path / "dump")], env=env, capture_output=True, text=True, timeout=240,
                            cwd=tmp_path)
    line = "softpick train: bad value for training.steps: invalid literal for int() with base 10: 'abc'."
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == line
    assert f"traceback : {line}" in result.stderr  # torchrun's summary shows the worker's line, not a link


def test_the_docs_say_to_activate_the_environment():
    for doc in ("README.md", "docs/train.md"):
        assert ". .venv/bin/activate" in (ROOT / doc).read_text(), doc
