"""Version checks: fail at import with one clear line when torch or transformers is too old."""

from __future__ import annotations

import re

MIN_TORCH = (2, 6)
MIN_TRANSFORMERS = (5, 0)


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
