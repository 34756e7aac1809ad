"""The exact versions the CuTe-DSL kernels were written and checked against, and the import-time check.

The CuTe DSL and FlashAttention-4 change their Python APIs between releases (both broke user code
several times in 2025-26), so the Hopper fast path runs only with these versions, installed by the
``softpick[hopper]`` extra. Anything else makes :func:`problem` say what to install, and the attention
ops fall back to the Triton kernels (or fail with that line under ``impl="cute"``).
"""

from __future__ import annotations

import functools
from importlib import metadata

import torch

PINS: dict[str, str] = {
    "nvidia-cutlass-dsl": "4.8.1",
    "flash-attn-4": "4.0.0b36",
    "quack-kernels": "0.6.5",
}
INSTALL_HINT = "pip install 'softpick[hopper]'"


@functools.lru_cache(maxsize=None)
def _problem() -> str | None:
    """None when the pinned CuTe DSL stack is installed and imports, else why not (one phrase)."""
    for name, want in PINS.items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            return f"{name} is not installed ({INSTALL_HINT})"
        if have != want:
            return f"{name} {have} is installed, the Hopper kernels need exactly {want} ({INSTALL_HINT})"
    try:
        import cutlass.cute  # noqa: F401
        import flash_attn.cute.interface  # noqa: F401
    except Exception as error:  # an import failure of a pinned, installed stack: say which
        return f"the CuTe DSL stack does not import ({type(error).__name__}: {error})"
    return None


@torch.compiler.assume_constant_result
def problem() -> str | None:
    """:func:`_problem`, cached, and a constant to ``torch.compile`` (which cannot trace package metadata)."""
    return _problem()
