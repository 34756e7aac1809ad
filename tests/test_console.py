"""A quiet, quick console: help without torch, --version, no known-harmless noise at start-up or per save."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
import time

import pytest

HELP = r"""
import contextlib, io, json, sys, time
start = time.perf_counter()
sys.argv = ["softpick", *json.loads(sys.argv[1])]   # as the console script sees it
from softpick.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        code = main(sys.argv[1:])
    except SystemExit as stop:  # lm-eval's own parser exits after its help
        code = stop.code
print(json.dumps({"code": code, "out": out.getvalue(), "seconds": time.perf_counter() - start,
                  "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
"""


@pytest.mark.parametrize("argv, expected", [(["-h"], "usage: softpick <command>"), (["--version"], "softpick 0.1.0"),
                                            (["train", "-h"], "--model.config"), (["analyze", "-h"], "--seq-len"),
                                            (["generate", "-h"], "--threads"), (["compare", "-h"], "--labels"),
                                            (["lm-eval", "-h"], "lm-eval")])
def test_help_and_version_load_no_torch(argv, expected):
    result = subprocess.run([sys.executable, "-c", HELP, json.dumps(argv)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["code"] == 0 and expected in answer["out"]
    assert not answer["torch"] and not answer["transformers"]
    assert answer["seconds"] < 2.0


QUIET = r"""
import sys, tempfile
import softpick
from softpick.models import SoftpickConfig, SoftpickForCausalLM
from softpick.train.convert import hf_to_dcp
model = SoftpickForCausalLM(SoftpickConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2))
with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(tmp + "/hf")
    hf_to_dcp(tmp + "/hf", tmp + "/step-0")   # a single-process DCP save
print("done")
"""

NOISE = ("Failed to load", "register_constant", "torch.distributed is disabled")


@pytest.mark.slow
def test_start_up_and_single_process_save_are_quiet():
    result = subprocess.run([sys.executable, "-c", QUIET], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "done" in result.stdout, result.stderr[-3000:]
    assert [n for n in NOISE if n in result.stderr] == [], result.stderr[-3000:]
    if importlib.util.find_spec("torchao") is None:  # nothing to silence here: say so rather than pass blindly
        pytest.skip("torchao is not installed, so transformers prints none of its start-up notices")


COMMANDS = {  # each command as a user starts it, up to where it has imported torch and transformers
    "data build -h": ["data", "build", "-h"],
    "demo -h": ["demo", "-h"],
    "convert": ["convert", "dcp-to-hf", "--path", "{tmp}/missing"],
    "analyze": ["analyze", "{tmp}/missing", "--out", "{tmp}/out", "--no-progress"],
    "generate": ["generate", "{tmp}/missing", "--prompt", "a"],
    "compare -h": ["compare", "-h"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_starts_quietly(name, tmp_path):
    """No torchao "Failed to load" or pytree notices on stderr, whichever command runs first (one filter
    installed by softpick.cli.main before the command's imports)."""
    if importlib.util.find_spec("torchao") is None:
        pytest.skip("torchao is not installed, so transformers prints none of its start-up notices")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in COMMANDS[name]]
    result = subprocess.run([sys.executable, "-m", "softpick", *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 2), result.stderr[-3000:]
    assert [n for n in NOISE if n in result.stderr] == [], result.stderr[-3000:]
    if result.returncode == 2:  # the missing folder: one line, nothing else
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_filters_are_narrow():
    """Other torchao and pytree messages still show."""
    import softpick  # noqa: F401  (installs the filters)

    kept = logging.LogRecord("torchao", logging.WARNING, __file__, 1, "Failed to load config.json", None, None)
    dropped = logging.LogRecord("torchao", logging.WARNING, __file__, 1,
                                "Failed to load /x/torchao/_C_mxfp8.so: Could not load", None, None)
    torchao = logging.getLogger("torchao")
    assert torchao.filter(kept) and not torchao.filter(dropped)


def test_log_lines_go_through_the_bar(tmp_path, monkeypatch, capsys):
    """While a tqdm bar is shown, log records are written with tqdm.write (above the bar, whole lines)."""
    import io

    from softpick.train.config import JobConfig
    from softpick.train.metrics import MetricsLogger

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    handler = logging.StreamHandler(terminal)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        config = JobConfig()
        metrics = MetricsLogger(config.metrics, tmp_path, rank=0, total_steps=3, start_step=0, job_config=config)
        assert metrics.bar is not None and not metrics.bar.disable
        assert handler not in root.handlers  # swapped for tqdm's handler while the bar lives
        metrics.step()
        logging.getLogger("softpick.train").warning("a message from the trainer")
        metrics.close()
        assert handler in root.handlers
    finally:
        root.removeHandler(handler)
    text = terminal.getvalue()
    assert "\na message from the trainer\n" in text.replace("\r", "\n")


def test_python_dash_m_help_and_train_sh_help_load_no_torch(tmp_path):
    """``python -m softpick train -h`` (what train.sh -h runs) works where importing torch or transformers fails."""
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for name in ("torch", "transformers"):  # shadow the real packages: importing them now raises
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('{name} must not be imported for help')")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for argv in (["-m", "softpick", "train", "-h"], ["-m", "softpick", "--version"]):
        result = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60, cwd=root, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
    assert "--checkpoint.interval_type" not in result.stdout and "softpick 0.1.0" in result.stdout
    assert "exec python -m softpick train -h" in (root / "train.sh").read_text()
