"""Faults and bad inputs: each ends in one line and a known exit code, and keeps what docs/faults.md says.

Runs are the tiny CPU run of train_utils (a few steps); signals and kill -9 use subprocesses.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_utils import model_config, nan_grad_norm_from_call, read_metrics, train_args

import softpick.train.trainer as trainer_mod
from softpick.errors import UserError, run_command
from softpick.train import convert
from softpick.train.checkpoint import check_model_fits, pick_checkpoint, step_dirs
from softpick.train.lock import LOCK_NAME, DumpLock
from softpick.train.trainer import main

CKPT = ("--checkpoint.enable_checkpoint", "--checkpoint.interval", "2")
ROOT = Path(__file__).resolve().parents[2]


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("softpick ")]
    assert len(err) == 1, err
    return err[0]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """name -> (size, mtime_ns) of every file under ``folder`` except the lock file."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and p.name != LOCK_NAME}


@pytest.fixture(scope="module")
def run4(assets, tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4 (copy it before changing it)."""
    dump = tmp_path_factory.mktemp("faults") / "run4"
    assert main(train_args(assets, dump, *CKPT, steps=4)) == 0
    assert sorted(step_dirs(dump / "checkpoint")) == [2, 4]
    return dump


def copy_run(run4: Path, tmp_path: Path) -> Path:
    dump = tmp_path / "run"
    shutil.copytree(run4, dump)
    return dump


def with_model(args: list[str], path: Path) -> list[str]:
    args[args.index("--model.config") + 1] = str(path)
    return args


def test_resume_with_another_model_stops_and_touches_nothing(assets, run4, tmp_path, capsys):
    dump = copy_run(run4, tmp_path)
    before = snapshot(dump)
    for name, fields, named in (("layers3.json", {"num_hidden_layers": 3}, "num_hidden_layers 2 -> 3"),
                                ("softmax.json", {"attn_type": "softmax"}, "attn_type 'softpick' -> 'softmax'")):
        other = model_config(tmp_path / name, **fields)
        args = with_model(train_args(assets, dump, *CKPT, "--checkpoint.keep_latest_k", "1", steps=6), other)
        assert main(args) == 2
        line = one_error_line(capsys)
        assert named in line and str(dump / "checkpoint" / "step-4") in line, line
        # convert checks the same
        assert run_command("convert", convert.main, ["dcp-to-hf", "--path", str(dump), "--config", str(other)]) == 2
        assert named in one_error_line(capsys)
    assert snapshot(dump) == before  # hf/, checkpoints and metrics untouched


def test_loading_is_strict_without_a_saved_config(assets, run4, tmp_path):
    from transformers import AutoModelForCausalLM

    other = AutoModelForCausalLM.from_config(trainer_mod.load_model_config(
        str(model_config(tmp_path / "wide.json", hidden_size=48, num_hidden_layers=3))))
    with pytest.raises(UserError, match=r"does not fit this model \(missing: model\.layers\.2\..*shape mismatch"):
        check_model_fits(run4 / "checkpoint" / "step-4", other, None)


def _truncate(step: Path) -> None:
    data = next(step.glob("*.distcp"))
    data.write_bytes(data.read_bytes()[:-100])


def _delete(step: Path) -> None:
    next(step.glob("*.distcp")).unlink()


def _garble_metadata(step: Path) -> None:
    meta = step / ".metadata"
    meta.write_bytes(b"garbage" + meta.read_bytes()[7:])


def _random_bytes(step: Path) -> None:
    data = next(step.glob("*.distcp"))
    blob = bytearray(data.read_bytes())
    mid = len(blob) // 2
    blob[mid:mid + 16] = os.urandom(16)
    data.write_bytes(bytes(blob))


@pytest.mark.parametrize("damage, problem", [
    (_truncate, "bytes, not"), (_delete, "is missing"), (_garble_metadata, ".metadata has changed bytes"),
    (_random_bytes, "changed bytes (checksum mismatch)"),
])
def test_a_damaged_latest_checkpoint_names_the_newest_good_one(run4, tmp_path, damage, problem):
    dump = copy_run(run4, tmp_path)
    damage(dump / "checkpoint" / "step-4")
    with pytest.raises(UserError) as info:
        pick_checkpoint(dump / "checkpoint")
    message = str(info.value)
    assert "step-4 is damaged" in message and problem in message and "--checkpoint.load_step 2" in message
    assert pick_checkpoint(dump / "checkpoint", 2) == dump / "checkpoint" / "step-2"


def test_random_bytes_in_the_weights_stop_the_run(assets, run4, tmp_path, capsys):
    dump = copy_run(run4, tmp_path)
    _random_bytes(dump / "checkpoint" / "step-4")
    assert main(train_args(assets, dump, *CKPT, steps=6)) == 2
    assert "checksum mismatch" in one_error_line(capsys)


def test_load_step_checks(assets, run4, tmp_path, capsys):
    dump = copy_run(run4, tmp_path)
    assert main(train_args(assets, dump, *CKPT, "--checkpoint.load_step", "3", steps=6)) == 2
    assert "checkpoint.load_step 3" in (line := one_error_line(capsys)) and "steps saved: 2, 4" in line
    assert main(train_args(assets, dump, *CKPT, steps=3)) == 2  # extending a finished run with fewer steps
    assert "past training.steps=3" in (line := one_error_line(capsys)) and "above 4" in line


def test_nan_stops_the_run_without_a_checkpoint(assets, tmp_path, monkeypatch, capsys):
    nan_grad_norm_from_call(3, monkeypatch)
    dump = tmp_path / "run"
    assert main(train_args(assets, dump, *CKPT, steps=6)) == 3
    line = one_error_line(capsys)
    assert "step 3: loss" in line and "grad norm nan is not finite" in line
    assert sorted(step_dirs(dump / "checkpoint")) == [2] and not (dump / "hf").exists()
    assert gc.isenabled()  # the loop re-enables gc when it raises


def test_skip_limit_stops_and_metrics_stay_strict_json(assets, tmp_path, monkeypatch, capsys):
    nan_grad_norm_from_call(2, monkeypatch)
    dump = tmp_path / "run"
    args = train_args(assets, dump, "--training.skip_nan_inf", "--training.skip_nan_inf_limit", "3", steps=8)
    assert main(args) == 3
    assert "3 steps in a row skipped" in one_error_line(capsys)

    def no_nan(text):
        raise AssertionError(f"bare {text} in metrics.jsonl")

    rows = [json.loads(line, parse_constant=no_nan) for line in (dump / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows] == [0, 1, 2]  # step 4 raised before it was logged
    assert rows[1]["grad_norm"] is None and rows[0]["grad_norm"] > 0


def test_a_second_run_on_the_folder_refuses_and_a_stale_lock_is_taken_over(assets, tmp_path, capsys, caplog):
    dump = tmp_path / "run"
    dump.mkdir()
    held = DumpLock(dump)
    try:
        assert main(train_args(assets, dump, steps=1)) == 2
        line = one_error_line(capsys)
        assert "in use by another run" in line and f"pid {os.getpid()}" in line
    finally:
        held.release()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (dump / LOCK_NAME).write_text(json.dumps({"host": "h", "pid": dead.pid, "started": "t"}))
    caplog.set_level("WARNING", logger="softpick.train")
    assert main(train_args(assets, dump, steps=1)) == 0
    assert any("took over the lock" in r.getMessage() and str(dead.pid) in r.getMessage() for r in caplog.records)


def test_ctrl_c_finishes_the_step_checkpoints_and_resumes_exactly(assets, tmp_path, monkeypatch, capsys):
    real, calls = trainer_mod.clip_grad_norm_, []

    def interrupt_in_step_3(params, max_norm):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step: the step still completes
        return real(params, max_norm)

    monkeypatch.setattr(trainer_mod, "clip_grad_norm_", interrupt_in_step_3)
    dump, args = tmp_path / "run", ("--checkpoint.enable_checkpoint", "--checkpoint.interval", "100")
    assert main(train_args(assets, dump, *args, steps=6)) == 75
    line = one_error_line(capsys)
    assert "stopped by SIGINT after step 3" in line and "rerun the same command" in line
    assert sorted(step_dirs(dump / "checkpoint")) == [3]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    monkeypatch.setattr(trainer_mod, "clip_grad_norm_", real)
    assert main(train_args(assets, dump, *args, steps=6)) == 0
    assert main(train_args(assets, tmp_path / "straight", steps=6)) == 0
    assert [r["loss"] for r in read_metrics(dump)] == [r["loss"] for r in read_metrics(tmp_path / "straight")]


def _wait_for_rows(dump: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(read_metrics(dump)) < n:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run did not log in time"
        time.sleep(0.2)


@pytest.mark.slow
def test_sigterm_and_kill_9_in_a_subprocess(assets, tmp_path):
    dump = tmp_path / "run"
    cmd = [sys.executable, "-m", "softpick.train.trainer", *train_args(assets, dump, *CKPT, steps=100000)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    _wait_for_rows(dump, 3, proc)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 75, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("softpick train: stopped by SIGTERM after step "), last
    step = int(last.split("after step ")[1].split(";")[0])
    assert step in step_dirs(dump / "checkpoint") and read_metrics(dump)[-1]["step"] == step
    # kill -9: no chance to clean up; the lock is left behind and the next run takes it over
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env, cwd=ROOT)
    _wait_for_rows(dump, len(read_metrics(dump)) + 3, proc)
    proc.kill()
    proc.wait()
    last_saved = max(step_dirs(dump / "checkpoint"))
    assert json.loads((dump / LOCK_NAME).read_text())["pid"] == proc.pid
    assert main(train_args(assets, dump, *CKPT, steps=last_saved + 1)) == 0
    assert [r["step"] for r in read_metrics(dump)] == list(range(1, last_saved + 2))  # each step once


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A folder on a tmpfs of ``size`` bytes (as root), else a fake: saves of step >= 4 raise ENOSPC."""
    mounts = []

    def make(size: int) -> Path:
        mnt = tmp_path / "disk"
        mnt.mkdir()
        ok = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                                                  capture_output=True).returncode == 0
        if ok:
            mounts.append(mnt)
        else:
            import errno

            import softpick.train.checkpoint as ckpt

            real = ckpt.dcp.save

            def full_at_step_4(state, checkpoint_id):
                if "step-4" in checkpoint_id:
                    raise OSError(errno.ENOSPC, "No space left on device", checkpoint_id)
                return real(state, checkpoint_id=checkpoint_id)

            monkeypatch.setattr(ckpt.dcp, "save", full_at_step_4)
        return mnt

    yield make
    for mnt in mounts:
        subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_names_the_disk_and_keeps_the_previous_checkpoint(assets, run4, tmp_path, small_disk, capsys):
    one = sum(p.stat().st_size for p in (run4 / "checkpoint" / "step-2").iterdir())
    disk = small_disk(int(one * 1.5) // 4096 * 4096 + 4096)  # room for one checkpoint, not two
    dump = tmp_path / "run"
    args = train_args(assets, dump, *CKPT, "--checkpoint.folder", str(disk / "ckpt"), steps=6)
    assert main(args) == 4
    line = one_error_line(capsys)
    assert "no space left on " in line and "while writing step-4" in line and "step-2 is kept" in line, line
    assert sorted(step_dirs(disk / "ckpt")) == [2] and not list((disk / "ckpt").glob("*.tmp"))
    assert pick_checkpoint(disk / "ckpt") == disk / "ckpt" / "step-2"  # whole


def test_unwritable_dump_folder_fails_before_any_work(assets, tmp_path, monkeypatch, capsys):
    def no_work(self):
        raise AssertionError("the model was built")

    monkeypatch.setattr(trainer_mod.Trainer, "_build_parallel_model", no_work)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(train_args(assets, blocker / "run", steps=1)) == 2
    assert "job.dump_folder" in (line := one_error_line(capsys)) and "is not writable" in line
    if os.geteuid() == 0:  # root writes through permission bits: use a read-only mount
        ro = tmp_path / "ro"
        ro.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)]).returncode == 0:
            try:
                assert main(train_args(assets, ro / "run", steps=1)) == 2
                assert "Read-only file system" in one_error_line(capsys)
            finally:
                subprocess.run(["umount", str(ro)], check=True)
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert main(train_args(assets, ro / "run", steps=1)) == 2
        assert "Permission denied" in one_error_line(capsys)


@pytest.mark.parametrize("setup, named", [
    (lambda p: p.write_text('{"model_type": "softpick_transformer",'), "is not valid json"),
    (lambda p: p.mkdir(), "a folder without config.json"),
    (lambda p: p.write_text('["softpick_transformer"]'), "must hold a json object"),
])
def test_bad_model_config_is_one_line(assets, tmp_path, capsys, setup, named):
    bad = tmp_path / "model.json"
    setup(bad)
    assert main(with_model(train_args(assets, tmp_path / "run", steps=1), bad)) == 2
    assert named in one_error_line(capsys)


def test_tokenizer_folder_without_a_tokenizer_is_one_line(assets, tmp_path, capsys):
    empty = tmp_path / "tok"
    empty.mkdir()
    args = train_args(assets, tmp_path / "run", steps=1)
    args[args.index("--model.tokenizer_path") + 1] = str(empty)
    assert main(args) == 2
    assert "holds no tokenizer" in one_error_line(capsys)


def test_a_resumed_run_gets_the_training_timeout(assets, run4, tmp_path, monkeypatch):
    import datetime

    import torch.distributed as dist

    from softpick.train.config import parse_args

    dump = copy_run(run4, tmp_path)
    timeouts = []
    monkeypatch.setattr(dist.distributed_c10d, "_set_pg_timeout", lambda timeout, group: timeouts.append(timeout))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        trainer = trainer_mod.Trainer(parse_args(train_args(assets, dump, *CKPT, "--comm.train_timeout_seconds", "77",
                                                            steps=5)))
        try:
            assert trainer.state["step"] == 4
            trainer.train()
        finally:
            trainer.close()
    finally:
        dist.destroy_process_group()
    assert timeouts == [datetime.timedelta(seconds=77)]


def test_selective_ac_saves_the_attention_kernel_output(monkeypatch):
    from torch.utils.checkpoint import checkpoint

    from softpick.ops.attention import softpick_attention
    from softpick.ops.attention.triton import training
    from softpick.train.parallel import _selective_op_context

    real, calls = training._fwd, []
    monkeypatch.setattr(training, "_fwd", lambda *a: calls.append(1) or real(*a))
    device = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the Triton interpreter (conftest)
    q, k, v = (torch.randn(1, 16, 2, 16, device=device, requires_grad=True) for _ in range(3))

    def block(q, k, v):
        return softpick_attention(q, k, v, impl="triton") * 2

    checkpoint(block, q, k, v, use_reentrant=False, context_fn=_selective_op_context).sum().backward()
    assert len(calls) == 1  # saved, not rerun in the backward
    checkpoint(block, q, k, v, use_reentrant=False).sum().backward()
    assert len(calls) == 3  # plain AC reruns it: the count is sensitive to recomputation


def test_debug_keeps_the_traceback(assets, tmp_path, monkeypatch):
    bad = tmp_path / "model.json"
    bad.write_text("{")
    args = with_model(train_args(assets, tmp_path / "run", steps=1), bad)
    monkeypatch.setenv("SOFTPICK_DEBUG", "0")  # restored after the test (run_command sets it to 1)
    with pytest.raises(UserError, match="is not valid json"):
        run_command("train", main, [*args, "--debug"])
