"""Load model configs, tokenizers and models from local paths or hub ids, failing fast and clearly.

Local paths always win. A name that is not a path but looks like ``org/name`` is fetched from the hub,
after :func:`softpick.hub.require_hub` has checked (in seconds) that the hub can be reached. Config files
may be ours (``softpick_transformer``), fla's (``transformer``, the softpick authors' format, converted by
:mod:`softpick.models.fla`) or any transformers model type.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from softpick.errors import UserError
from softpick.hub import hub_error_line, looks_like_repo_id, require_hub


def config_from_dict(data: dict[str, Any], *, source: str) -> Any:
    """A transformers config from a config.json dict: fla's format converted, an unknown model_type in one line."""
    import softpick.models  # noqa: F401  (registers softpick_transformer)
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from softpick.models.fla import config_from_fla, is_fla_config

    if is_fla_config(data):
        return config_from_fla(data, source=source)
    data = dict(data)
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise UserError(f"{source} has no model_type (e.g. 'softpick_transformer', fla's 'transformer' or 'llama').")
    if model_type not in CONFIG_MAPPING:
        raise UserError(f"{source}: unknown model_type {model_type!r}; use 'softpick_transformer', fla's "
                        "'transformer', or a transformers model type such as 'llama'.")
    if model_type == "softpick_transformer":
        from softpick.models.configuration_softpick import unknown_key

        bad = unknown_key(data)
        if bad is not None:
            raise UserError(f"{source}: unknown key {bad[0]!r}" + (f" (did you mean {bad[1]!r}?)" if bad[1] else "")
                            + "; every key must be a field of SoftpickConfig.")
    try:
        return AutoConfig.for_model(model_type, **data)
    except (TypeError, ValueError) as err:
        raise UserError(f"{source}: {str(err).strip().splitlines()[0][:300]}") from None


def _read_json(path: Path, flag: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{flag} {str(path)!r} is not valid json: {err}.") from None
    if not isinstance(data, dict):
        raise UserError(f"{flag} {str(path)!r} must hold a json object, not {type(data).__name__}.")
    return data


def load_model_config(source: str | None, *, flag: str = "model.config") -> Any:
    """The config named by ``source``: a json file, a folder with config.json, or a hub id (online only)."""
    if source is None:
        raise UserError(f"{flag} is required: a config json (e.g. configs/softpick_transformer_340M.json).")
    path = Path(source)
    if path.is_file():
        return config_from_dict(_read_json(path, flag), source=f"{flag} {source!r}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{flag} {source!r} is a folder without config.json.")
        return config_from_dict(_read_json(path / "config.json", flag), source=f"{flag} {source!r}")
    if not looks_like_repo_id(source):
        raise UserError(f"{flag} {source!r} does not exist (give a config json, a model folder or a hub id).")
    require_hub(flag, source)
    from transformers import PreTrainedConfig

    try:
        data, _ = PreTrainedConfig.get_config_dict(source)
    except Exception as err:  # noqa: BLE001  (hub errors: not found, gated, http; all end in one line)
        raise UserError(hub_error_line(flag, source, err)) from None
    return config_from_dict(data, source=f"{flag} {source!r}")


def load_tokenizer(source: str, *, flag: str = "model.tokenizer_path") -> Any:
    """An HF tokenizer from a local folder (or tokenizer file's folder) or a hub id (online only)."""
    from transformers import AutoTokenizer

    if Path(source).exists():
        try:
            return AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError, TypeError):
            raise UserError(f"{flag} {source!r} holds no tokenizer transformers can read; give a folder with "
                            f"tokenizer.json or tokenizer_config.json.") from None
    if not looks_like_repo_id(source):
        raise UserError(f"{flag} {source!r} does not exist (give a tokenizer folder or a hub id).")
    require_hub(flag, source)
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as err:  # noqa: BLE001  (hub errors)
        raise UserError(hub_error_line(flag, source, err)) from None


def check_device(device: str, flag: str = "--device") -> torch.device:
    """``device`` as a torch.device that this machine has; UserError (one line) otherwise."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"{flag} {device!r} is not a device ({str(err).splitlines()[0]}); use cpu or cuda.") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{flag} {device!r}: this machine has no CUDA device (torch {torch.__version__}); "
                            f"use --device cpu.")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UserError(f"{flag} {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    elif parsed.type not in ("cpu", "meta") and not getattr(torch, parsed.type, None):
        raise UserError(f"{flag} {device!r} is not available here; use cpu or cuda.")
    return parsed


def non_finite_weights(model: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``model`` that hold NaN or Inf (one pass over the weights)."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def load_model_and_tokenizer(model_dir: str, tokenizer_dir: str | None, device: str, dtype: torch.dtype):
    """from_pretrained of the model (eval mode, on ``device``) and of its tokenizer; clear errors.

    ``model_dir`` (and ``tokenizer_dir``) may be hub ids; they are fetched only when the hub can be reached.
    Weights holding NaN or Inf are refused (a diverged run or a damaged file: every output would be NaN,
    and attention would treat NaN scores as masked).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_device(device)
    path = Path(model_dir)
    hub = not path.exists() and looks_like_repo_id(model_dir)
    if hub:
        require_hub("MODEL_DIR", model_dir)
    elif not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist.")
    elif not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path / 'config.json'} does not exist: MODEL_DIR must be a save_pretrained folder.")
    elif _read_json(path / "config.json", "MODEL_DIR").get("model_type") == "transformer":
        raise UserError(f"{path} is an fla checkpoint (model_type 'transformer'): convert it first with "
                        f"softpick convert fla-to-hf {path} OUT.")
    tok_source = tokenizer_dir or model_dir
    if tokenizer_dir and not Path(tokenizer_dir).exists():
        if not looks_like_repo_id(tokenizer_dir):
            raise FileNotFoundError(f"tokenizer folder {tokenizer_dir} does not exist.")
        require_hub("--tokenizer", tokenizer_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_source)
    except (OSError, ValueError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(f"no tokenizer could be loaded from {tok_source} ({first}); pass --tokenizer DIR.") from error
    if not hub and not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise FileNotFoundError(f"{path} holds no weights (model.safetensors or pytorch_model.bin); "
                                f"MODEL_DIR must be a save_pretrained folder.")
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    except (OSError, RuntimeError, SafetensorError) as err:
        if hub:
            raise UserError(hub_error_line("MODEL_DIR", model_dir, err)) from None
        raise ValueError(f"the weights in {path} do not load ({str(err).strip().splitlines()[0]}): a truncated file, "
                         f"or a config.json that does not match them; export the model again.") from None
    bad = non_finite_weights(model)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ValueError(f"the weights in {model_dir} hold NaN or Inf ({', '.join(bad[:3])}{more}): the run that "
                         f"wrote them diverged, or the file is damaged; export an earlier checkpoint "
                         f"(softpick convert dcp-to-hf --step N).")
    return model.to(device).eval(), tokenizer
