"""Load a ``save_pretrained`` folder (model and tokenizer) with the Auto classes, failing fast and clearly."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError


def load_model_and_tokenizer(model_dir: str, tokenizer_dir: str | None, device: str, dtype: torch.dtype):
    """from_pretrained of the model (eval mode, on ``device``) and of its tokenizer; clear errors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist.")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path / 'config.json'} does not exist: MODEL_DIR must be a save_pretrained folder.")
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path / 'config.json'} is not valid json ({error}); fix it or export the model again.") from None
    tok_path = Path(tokenizer_dir) if tokenizer_dir else path
    if tokenizer_dir and not tok_path.is_dir():
        raise FileNotFoundError(f"tokenizer folder {tok_path} does not exist.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_path))
    except (OSError, ValueError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(f"no tokenizer could be loaded from {tok_path} ({first}); pass --tokenizer DIR.") from error
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise FileNotFoundError(f"{path} holds no weights (model.safetensors or pytorch_model.bin); "
                                f"MODEL_DIR must be a save_pretrained folder.")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except (OSError, RuntimeError, SafetensorError) as error:
        raise ValueError(f"the weights in {path} do not load ({str(error).strip().splitlines()[0]}): a truncated file, "
                         f"or a config.json that does not match them; export the model again.") from None
    return model.to(device).eval(), tokenizer
