"""softpick._compat: each workaround on another library's internals works on the installed version and
fails with one clear CompatError (naming the library, the version and what changed) when it is gone."""

import datetime

import pytest
import torch.distributed as dist

from softpick import _compat


def test_checked_versions_cover_the_installed_ones():
    import torch
    import transformers
    import triton

    for library, module in (("torch", torch), ("transformers", transformers), ("triton", triton)):
        low, high = (_compat._parse(v) for v in _compat.CHECKED[library].split(" - "))
        assert low <= _compat._parse(module.__version__) <= high, (library, module.__version__)


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
