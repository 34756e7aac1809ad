"""softpick: train, run and study language models whose attention uses softpick instead of softmax.

``import softpick`` registers ``SoftpickConfig`` / ``SoftpickForCausalLM`` with the transformers Auto
classes (model_type ``softpick_transformer``).
"""

from __future__ import annotations

__version__ = "0.1.0"

from softpick._compat import check_versions

check_versions()

from softpick.ops import DEFAULT_EPS, softmax_attention, softpick, softpick_attention  # noqa: E402
from softpick.models import SoftpickConfig, SoftpickForCausalLM  # noqa: E402

__all__ = [
    "DEFAULT_EPS",
    "SoftpickConfig",
    "SoftpickForCausalLM",
    "__version__",
    "softmax_attention",
    "softpick",
    "softpick_attention",
]
