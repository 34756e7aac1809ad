"""The softpick transformer as a transformers model (model_type ``softpick_transformer``).

Importing this package registers the config and models with ``AutoConfig``, ``AutoModel`` and
``AutoModelForCausalLM``, so ``from_pretrained`` / ``save_pretrained`` (safetensors) work by name.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from softpick.models.configuration_softpick import ATTN_IMPLS, ATTN_TYPES, SoftpickConfig
from softpick.models.modeling_softpick import CACHE_FIELD, SoftpickForCausalLM, SoftpickModel

AutoConfig.register(SoftpickConfig.model_type, SoftpickConfig, exist_ok=True)
AutoModel.register(SoftpickConfig, SoftpickModel, exist_ok=True)
AutoModelForCausalLM.register(SoftpickConfig, SoftpickForCausalLM, exist_ok=True)


def load_config(path: str | Path, **overrides) -> SoftpickConfig:
    """Read a SoftpickConfig from a .json file or a directory holding config.json; overrides set fields."""
    return SoftpickConfig.from_pretrained(str(path), **overrides)


__all__ = [
    "ATTN_IMPLS",
    "ATTN_TYPES",
    "CACHE_FIELD",
    "SoftpickConfig",
    "SoftpickForCausalLM",
    "SoftpickModel",
    "load_config",
]
