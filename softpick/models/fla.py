"""fla's ``transformer`` models (the softpick authors' format) as :class:`SoftpickConfig` and our weight names.

The paper's checkpoints and flame's configs use fla's ``TransformerConfig`` (``model_type: "transformer"``:
``num_heads``, ``num_kv_heads``, ``hidden_ratio``, ``norm_eps``, ``attn_impl`` ...) and fla's parameter
names (``model.embeddings``, ``layers.N.attn_norm``, ``layers.N.attn.q_proj``, ``layers.N.mlp_norm`` ...).
The model is the same Llama-shaped decoder (RMSNorm, RoPE in the rotate-half layout, SwiGLU, no biases), so a
config maps field by field and a state dict key by key:

- :func:`config_from_fla` reads an fla config dict; ``attn_impl`` picks ``attn_type`` and SSMax
  (:data:`FLA_ATTN_IMPLS`); fla's SSMax table is log(position + 2), kept with ``ssmax_offset=2``.
- :func:`state_dict_from_fla` renames the weights (the SSMax scales ``attn.s`` [HQ, 1] become
  ``self_attn.ssmax_scale`` [HQ]; the ``logn`` table and RoPE buffers are dropped, we recompute them).
- :func:`convert_fla_checkpoint` does both for a folder (safetensors or ``.bin``, one file or sharded) and
  writes a portable model folder (:func:`softpick.models.export.save_portable`).

Eps: fla's kernels add 1e-6 (naive: 1e-8) times the row's exp(max) to the softpick denominator; ours adds a
constant 1e-6 (see :mod:`softpick.ops.softpick.naive`). Outputs differ only where that sum is ~1e-6.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from softpick.errors import UserError
from softpick.models.configuration_softpick import SoftpickConfig

FLA_MODEL_TYPE = "transformer"
"""``model_type`` of fla's TransformerConfig."""

FLA_ATTN_IMPLS: dict[str, tuple[str, bool]] = {
    "flash_attn": ("softmax", False), "parallel_attn": ("softmax", False), "naive_attn": ("softmax", False),
    "parallel_softpick_attn": ("softpick", False), "naive_softpick_attn": ("softpick", False),
    "parallel_scaled_attn": ("softmax", True), "naive_scaled_attn": ("softmax", True),
    "parallel_scaled_softpick_attn": ("softpick", True), "naive_scaled_softpick_attn": ("softpick", True),
}
"""fla ``attn_impl`` -> (our ``attn_type``, ``ssmax``). fla's default is ``flash_attn`` (softmax)."""

FLA_SSMAX_OFFSET = 2
"""fla's scaled attention multiplies q by log(position + 2) (its ``logn`` table starts at log 2)."""

_IGNORED_FIELDS = ("fuse_norm", "fuse_swiglu", "fuse_cross_entropy", "use_l2warp", "attn_impl", "model_type",
                   "architectures", "transformers_version", "torch_dtype", "dtype", "auto_map")
"""fla fields with no effect on the math (fused kernels, bookkeeping) or consumed separately."""

_UNSUPPORTED = {"qk_norm": False, "qkv_bias": False, "window_size": None, "elementwise_affine": True}
"""fla fields we cannot represent, with the only value we accept."""

_RENAMES = (
    ("model.embeddings.", "model.embed_tokens."),
    (".attn_norm.", ".input_layernorm."),
    (".mlp_norm.", ".post_attention_layernorm."),
    (".attn.", ".self_attn."),
)
"""Substring renames from fla's parameter names to ours (Llama's), applied in order."""


def is_fla_config(data: dict[str, Any]) -> bool:
    """Whether a config dict is fla's transformer format."""
    return data.get("model_type") == FLA_MODEL_TYPE


def fla_intermediate_size(hidden_size: int, hidden_ratio: float) -> int:
    """fla GatedMLP's width when intermediate_size is unset: int(hidden * ratio * 2 / 3) rounded up to 256."""
    width = int(hidden_size * hidden_ratio * 2 / 3)
    return 256 * ((width + 255) // 256)


def config_from_fla(data: dict[str, Any], *, source: str = "the config") -> SoftpickConfig:
    """The SoftpickConfig of an fla ``transformer`` config dict; UserError (one line) for what we cannot run."""
    data = dict(data)
    impl = data.get("attn_impl") or "flash_attn"
    if impl not in FLA_ATTN_IMPLS:
        raise UserError(f"{source}: fla attn_impl {impl!r} has no softpick equivalent; known: "
                        f"{', '.join(FLA_ATTN_IMPLS)}.")
    for name, accepted in _UNSUPPORTED.items():
        if data.get(name, accepted) != accepted:
            raise UserError(f"{source}: fla {name}={data[name]!r} is not supported (only {accepted!r}).")
    attn_type, ssmax = FLA_ATTN_IMPLS[impl]
    hidden = data.pop("hidden_size", 2048)
    heads = data.pop("num_heads", 32)
    ratio = data.pop("hidden_ratio", 4) or 4
    intermediate = data.pop("intermediate_size", None) or fla_intermediate_size(hidden, ratio)
    act = data.pop("hidden_act", "swish")
    fields = dict(
        hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=data.pop("num_kv_heads", None) or heads,
        intermediate_size=intermediate, hidden_act="silu" if act == "swish" else act,
        num_hidden_layers=data.pop("num_hidden_layers", 24), rms_norm_eps=data.pop("norm_eps", 1e-6),
        rope_theta=data.pop("rope_theta", 10000.0) or 10000.0,
        max_position_embeddings=data.pop("max_position_embeddings", 2048), vocab_size=data.pop("vocab_size", 32000),
        initializer_range=data.pop("initializer_range", 0.006), tie_word_embeddings=data.pop("tie_word_embeddings", False),
        bos_token_id=data.pop("bos_token_id", 1), eos_token_id=data.pop("eos_token_id", 2),
        pad_token_id=data.pop("pad_token_id", None), use_cache=data.pop("use_cache", True),
        attn_type=attn_type, ssmax=ssmax, ssmax_offset=FLA_SSMAX_OFFSET if ssmax else 1,
    )
    for name in (*_IGNORED_FIELDS, *_UNSUPPORTED):
        data.pop(name, None)
    # anything left is a generic PreTrainedConfig field (output_attentions, ...) or unknown to both
    try:
        return SoftpickConfig(**fields, **data)
    except (TypeError, ValueError) as err:
        raise UserError(f"{source}: {err}") from None


def state_dict_from_fla(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fla parameter names -> ours; SSMax ``s`` [HQ, 1] -> ``ssmax_scale`` [HQ]; buffers dropped."""
    out = {}
    for key, value in state.items():
        if key.endswith(".attn.logn") or ".rotary." in key:
            continue  # recomputed: the SSMax log table, RoPE frequencies
        new = key
        for old, replacement in _RENAMES:
            new = new.replace(old, replacement)
        if new.endswith(".self_attn.s"):
            new, value = new[: -len(".s")] + ".ssmax_scale", value.reshape(-1)
        out[new] = value
    return out


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder: model.safetensors or pytorch_model.bin, one file or sharded."""
    from safetensors.torch import load_file

    for index_name, single, loader in (
        ("model.safetensors.index.json", "model.safetensors", load_file),
        ("pytorch_model.bin.index.json", "pytorch_model.bin",
         lambda p: torch.load(p, map_location="cpu", weights_only=True)),
    ):
        index = folder / index_name
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for name in files:
                state.update(loader(str(folder / name)))
            return state
        if (folder / single).is_file():
            return loader(str(folder / single))
    raise UserError(f"{folder} holds no model.safetensors or pytorch_model.bin (nor a sharded index of them).")


def convert_fla_checkpoint(src: str | Path, out: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Convert an fla ``transformer`` checkpoint folder (config.json + weights) to a portable model folder.

    The tokenizer files in ``src``, if any, are saved beside the model. Returns ``out``.
    """
    from softpick.models.export import save_portable
    from softpick.models.modeling_softpick import SoftpickForCausalLM

    src = Path(src)
    if not (src / "config.json").is_file():
        raise UserError(f"{src / 'config.json'} does not exist: SRC must be an fla checkpoint folder.")
    data = json.loads((src / "config.json").read_text(encoding="utf-8"))
    if not is_fla_config(data):
        raise UserError(f"{src / 'config.json'} has model_type {data.get('model_type')!r}, not fla's 'transformer'.")
    config = config_from_fla(data, source=str(src / "config.json"))
    state = state_dict_from_fla(read_state_dict(src))
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    with torch.device("meta"):
        model = SoftpickForCausalLM(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise UserError(f"{src}: the weights do not fit the config: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]} (of {len(missing)} and {len(unexpected)}).")
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    tokenizer = None
    if (src / "tokenizer_config.json").is_file() or (src / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(src))
    return save_portable(model, out, tokenizer=tokenizer, dtype=dtype)


__all__ = ["FLA_ATTN_IMPLS", "config_from_fla", "convert_fla_checkpoint", "is_fla_config", "state_dict_from_fla"]
