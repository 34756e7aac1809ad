"""The dump folder's run.lock: removed when a run ends, never two holders of two different files."""

import os

import pytest

from softpick.errors import UserError
from softpick.train import lock as lock_mod
from softpick.train.lock import LOCK_NAME, DumpLock


def test_a_finished_run_leaves_no_lock_file(tmp_path):
    held = DumpLock(tmp_path)
    assert (tmp_path / LOCK_NAME).is_file()
    with pytest.raises(UserError, match="in use by another run"):
        DumpLock(tmp_path)
    held.release()
    held.release()  # idempotent
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_taken_on_a_removed_file_is_taken_again_on_the_new_one(tmp_path, monkeypatch):
    """Run B opened run.lock just before run A ended and removed it: B must not hold the removed file."""
    first = DumpLock(tmp_path)
    stale = os.open(tmp_path / LOCK_NAME, os.O_RDWR)  # B's open, before A's release
    first.release()
    real_open, calls = os.open, []

    def open_stale_first(path, flags, mode=0o777):
        calls.append(path)
        return stale if len(calls) == 1 else real_open(path, flags, mode)

    monkeypatch.setattr(lock_mod.os, "open", open_stale_first)
    second = DumpLock(tmp_path)
    monkeypatch.setattr(lock_mod.os, "open", real_open)
    assert len(calls) == 2 and (tmp_path / LOCK_NAME).is_file()
    with pytest.raises(UserError, match="in use by another run"):  # a third run sees B's lock on the real file
        DumpLock(tmp_path)
    second.release()
