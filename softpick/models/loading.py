"""Load a ``save_pretrained`` folder (model and tokenizer) with the Auto classes, failing fast and clearly."""

from __future__ import annotations

from pathlib import Path

import torch


def load_model_and_tokenizer(model_dir: str, tokenizer_dir: str | None, device: str, dtype: torch.dtype):
    """from_pretrained of the model (eval mode, on ``device``) and of its tokenizer; clear errors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist.")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path / 'config.json'} does not exist: MODEL_DIR must be a save_pretrained folder.")
    tok_path = Path(tokenizer_dir) if tokenizer_dir else path
    if tokenizer_dir and not tok_path.is_dir():
        raise FileNotFoundError(f"tokenizer folder {tok_path} does not exist.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_path))
    except (OSError, ValueError, TypeError) as error:
        raise FileNotFoundError(f"no tokenizer could be loaded from {tok_path} ({error}); pass --tokenizer DIR.") from error
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()
    return model, tokenizer
