"""Other libraries' versions, and every place softpick leans on their internals, in one module.

``check_versions`` runs when the package loads: it fails with one line when torch or transformers is
too old, and warns once (:class:`UncheckedVersionWarning`, one line) when torch, transformers or triton
is newer than the versions softpick was checked with (requirements/lock.txt pins those for CI). The rest are workarounds on private or undocumented parts of other libraries; each says what
it relies on and the versions it was checked against (``CHECKED``), has a test in tests/test_compat.py,
and raises :class:`CompatError` naming the installed version when that part is gone, instead of an
AttributeError deep in a kernel launch or a decoding step.
"""

from __future__ import annotations

import datetime
import re

MIN_TORCH = (2, 6)
MIN_TRANSFORMERS = (5, 0)

CHECKED = {
    "transformers": "5.0 - 5.24",
    "triton": "3.6 - 3.9",
    "torch": "2.6 - 2.13",
}
"""Library -> the versions the workarounds below were checked against."""


class CompatError(RuntimeError):
    """An internal of another library that softpick relies on is not there in the installed version."""


class UncheckedVersionWarning(UserWarning):
    """An installed library is newer than the versions softpick was checked with; it may still work."""


def _parse(version: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"cannot read the version string {version!r}.")
    return int(match.group(1)), int(match.group(2))


def check_versions() -> None:
    """Raise ImportError naming the installed version when torch or transformers is unsupported."""
    import torch
    import transformers

    if _parse(torch.__version__) < MIN_TORCH:
        raise ImportError(
            f"softpick needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]}, found torch {torch.__version__}."
        )
    if _parse(transformers.__version__) < MIN_TRANSFORMERS:
        raise ImportError(
            f"softpick needs transformers >= {MIN_TRANSFORMERS[0]}.{MIN_TRANSFORMERS[1]}, "
            f"found transformers {transformers.__version__}."
        )
    warn_unchecked()


def warn_unchecked() -> list[str]:
    """Warn once per library newer than ``CHECKED``; returns the warnings' texts (empty when all are checked)."""
    import importlib.metadata
    import warnings

    texts = []
    for library, checked in CHECKED.items():
        try:
            version = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            continue
        if _parse(version) <= _parse(checked.split(" - ")[1]):
            continue
        texts.append(
            f"softpick was checked with {library} {checked}; {library} {version} is newer and may work, but "
            f"if something breaks install the locked version: pip install -c requirements/lock.txt {library}."
        )
        warnings.warn(texts[-1], UncheckedVersionWarning, stacklevel=2)
    return texts


def _broken(library: str, relies_on: str, why: str) -> CompatError:
    import importlib

    version = getattr(importlib.import_module(library), "__version__", "?")
    return CompatError(
        f"softpick relies on {relies_on} ({why}), checked with {library} {CHECKED[library]}; "
        f"{library} {version} has changed it: install a checked {library} version, or report this."
    )


def check_cache_fields() -> None:
    """transformers' cache layers keep ``keys``, ``values`` and ``is_initialized`` as plain attributes,
    a ``DynamicCache`` its layers in ``.layers`` and an ``offloading`` flag: softpick.models.cache
    appends to a ``DynamicLayer`` by writing ``layer.keys`` / ``layer.values`` as views of its own
    buffer, and reads how much of a ``StaticLayer`` is filled from its ``cumulative_length`` tensor."""
    from transformers import cache_utils

    relies_on = ("DynamicLayer/StaticLayer .keys, .values, .is_initialized, StaticLayer .cumulative_length and "
                 "DynamicCache .layers, .offloading")
    why = "appending to the KV cache in place"
    try:
        layers = (cache_utils.DynamicLayer(), cache_utils.StaticLayer(max_cache_len=1))
        cache = cache_utils.DynamicCache()
    except (AttributeError, TypeError) as error:
        raise _broken("transformers", relies_on, why) from error
    fields_ok = all(hasattr(layer, name) for layer in layers for name in ("keys", "values", "is_initialized"))
    if not (fields_ok and hasattr(layers[1], "cumulative_length")
            and isinstance(getattr(cache, "layers", None), list) and hasattr(cache, "offloading")):
        raise _broken("transformers", relies_on, why)


def triton_allocator_unset() -> bool:
    """True when this context has no Triton allocator (``triton.runtime._allocation._allocator``, a
    ContextVar that holds a ``NullAllocator`` until ``triton.set_allocator``). Triton has no public way
    to ask; the TMA kernels set their own allocator only when the caller set none."""
    try:
        from triton.runtime import _allocation

        current, null = _allocation._allocator, _allocation.NullAllocator
    except (ImportError, AttributeError) as error:
        raise _broken("triton", "triton.runtime._allocation._allocator and NullAllocator",
                      "leaving an allocator the caller set in place") from error
    current = current.get() if hasattr(current, "get") else current
    return current is None or isinstance(current, null)


def set_pg_timeout(timeout: datetime.timedelta, group=None) -> None:
    """Change a live process group's collective timeout (``torch.distributed.distributed_c10d._set_pg_timeout``;
    None: the default group): the trainer starts with a long timeout for compilation and the first
    checkpoint load, then tightens it after the first step."""
    from torch.distributed import distributed_c10d

    set_timeout = getattr(distributed_c10d, "_set_pg_timeout", None)
    if set_timeout is None:
        raise _broken("torch", "torch.distributed.distributed_c10d._set_pg_timeout",
                      "tightening the collective timeout after the first step")
    set_timeout(timeout, group)
