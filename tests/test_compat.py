"""softpick._compat: each workaround on another library's internals works on the installed version and
fails with one clear CompatError (naming the library, the version and what changed) when it is gone."""

import datetime

import pytest
import torch.distributed as dist

from softpick import _compat


def _locked() -> dict[str, str]:
    from pathlib import Path

    lock = Path(__file__).resolve().parents[1] / "requirements" / "lock.txt"
    pins = (line.split("==") for line in lock.read_text().splitlines() if "==" in line and not line.startswith("#"))
    return {name.lower(): version for name, version in pins}


def test_checked_versions_cover_the_locked_ones():
    """The lock file CI installs from holds versions the workarounds were checked with."""
    locked = _locked()
    for library, checked in _compat.CHECKED.items():
        low, high = (_compat._parse(v) for v in checked.split(" - "))
        assert low <= _compat._parse(locked[library]) <= high, (library, locked[library], checked)


def test_newer_library_warns_not_fails(monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "5.99.0" if name == "transformers" else real(name))
    with pytest.warns(_compat.UncheckedVersionWarning, match=r"checked with transformers 5\.0 - 5\.24; transformers 5\.99\.0 is newer") as caught:
        texts = _compat.warn_unchecked()
    assert len(texts) == 1 and len(caught) == 1 and "\n" not in texts[0]
    monkeypatch.setattr(importlib.metadata, "version", real)
    assert _compat.warn_unchecked() == []  # the suite runs on the locked versions


def test_cache_fields(monkeypatch):
    from transformers import cache_utils

    _compat.check_cache_fields()

    class MovedLayer:  # a future DynamicLayer that keeps its tensors elsewhere
        pass

    monkeypatch.setattr(cache_utils, "DynamicLayer", MovedLayer)
    with pytest.raises(_compat.CompatError, match=r"checked with transformers 5\.0 - 5\.24; transformers 5\.\d+"):
        _compat.check_cache_fields()


def test_triton_allocator(monkeypatch):
    import triton
    from triton.runtime import _allocation

    assert _compat.triton_allocator_unset()  # nothing in the test process sets one
    token = _allocation._allocator.set(lambda size, alignment, stream: None)
    try:
        assert not _compat.triton_allocator_unset()
    finally:
        _allocation._allocator.reset(token)
    monkeypatch.delattr(_allocation, "_allocator")
    with pytest.raises(_compat.CompatError, match=f"triton {triton.__version__} has changed it"):
        _compat.triton_allocator_unset()


def test_pg_timeout(tmp_path, monkeypatch):
    from torch.distributed import distributed_c10d

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        _compat.set_pg_timeout(datetime.timedelta(seconds=123))
        monkeypatch.delattr(distributed_c10d, "_set_pg_timeout")
        with pytest.raises(_compat.CompatError, match="_set_pg_timeout"):
            _compat.set_pg_timeout(datetime.timedelta(seconds=60))
    finally:
        dist.destroy_process_group()
