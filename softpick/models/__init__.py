"""The softpick transformer as a transformers model (model_type ``softpick_transformer``).

Importing this package registers the config and models with ``AutoConfig``, ``AutoModel`` and
``AutoModelForCausalLM``, so ``from_pretrained`` / ``save_pretrained`` (safetensors) work by name, and
saved checkpoints also load with ``trust_remote_code=True`` in processes that did not import softpick.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from softpick.models.configuration_softpick import ATTN_IMPLS, ATTN_TYPES, SoftpickConfig
from softpick.models.modeling_softpick import CACHE_FIELD, SoftpickForCausalLM, SoftpickModel
import softpick.models.fast_generate  # noqa: E402,F401  (routes generate(cache_implementation="static") there)

AutoConfig.register(SoftpickConfig.model_type, SoftpickConfig, exist_ok=True)
AutoModel.register(SoftpickConfig, SoftpickModel, exist_ok=True)
AutoModelForCausalLM.register(SoftpickConfig, SoftpickForCausalLM, exist_ok=True)
# save_pretrained also writes an auto_map and copies of configuration_softpick.py / modeling_softpick.py, so a
# process that never imported softpick (lm-eval, say) loads checkpoints with trust_remote_code=True; those copies
# import the installed softpick package. softpick.models.export.save_portable (what the trainer and the
# converters write) ships self-contained copies instead, and saves plain softmax models as Llama checkpoints.
SoftpickConfig.register_for_auto_class()
SoftpickModel.register_for_auto_class("AutoModel")
SoftpickForCausalLM.register_for_auto_class("AutoModelForCausalLM")


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
