"""Session fixture: tokenizer, documents and tiny model configs for the trainer tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_utils import make_docs, make_tokenizer, model_config


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train_assets")
    return {
        "tokenizer": make_tokenizer(root / "tokenizer"),
        "docs": make_docs(root / "docs.jsonl", 400, seed=0),
        "model": model_config(root / "softpick.json"),
        "llama": model_config(root / "llama.json", "llama"),
        "variants": model_config(root / "variants.json", attn_type="sink", ssmax=True, output_gate="elementwise"),
    }
