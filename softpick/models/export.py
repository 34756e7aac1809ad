"""Model folders that load anywhere: a Llama checkpoint for plain softmax, self-contained remote code otherwise.

:func:`save_portable` writes ``save_pretrained`` files that need neither softpick nor network:

- a plain softmax model (``attn_type="softmax"``, no ``ssmax``, no ``output_gate``) *is* a Llama (same
  parameter names, same math), so it is written as ``model_type: llama``: ``LlamaForCausalLM`` and every
  Llama tool (lm-eval, vLLM, llama.cpp converters) read it as is;
- every other variant keeps ``model_type: softpick_transformer`` and ships its modeling code:
  ``configuration_softpick.py``, ``modeling_softpick.py`` and the plain-PyTorch ops they use, each
  softpick import rewritten to a relative one (:func:`write_remote_code`), so
  ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` works without softpick installed.
  The shipped ops are the naive ones (:mod:`softpick.ops.attention.portable`); with softpick imported the
  folder loads through the registered classes and the fast kernels instead. An export refuses to be
  written when a shipped op's signature differs from the public one or lacks a name the shipped code
  imports (:func:`substitute_drift`), so the shipped code cannot drift from the package's.

The tokenizer is saved beside the model with an explicit ``tokenizer_class``, so ``AutoTokenizer`` never
needs the model config (and never asks whether to run custom code).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

REMOTE_MODULES = ("softpick.models.configuration_softpick", "softpick.models.modeling_softpick")
"""The modules named by the ``auto_map`` of a softpick config.json (their file names must stay as they are)."""

SUBSTITUTES = {"softpick.ops": "softpick.ops.attention.portable"}
"""Modules replaced in shipped code: the kernel dispatcher (Triton, SDPA) by its naive-only twin."""


def is_plain_softmax(config: Any) -> bool:
    """True when the softpick config describes exactly a Llama (softmax, no SSMax, no output gate)."""
    return (getattr(config, "model_type", None) == "softpick_transformer" and config.attn_type == "softmax"
            and not config.ssmax and config.output_gate is None)


def llama_config(config: Any) -> Any:
    """The ``LlamaConfig`` of a plain softmax softpick config (same sizes, RoPE base, norms, token ids)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim, hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_theta)},
        initializer_range=config.initializer_range, tie_word_embeddings=config.tie_word_embeddings,
        attention_bias=config.attention_bias, mlp_bias=config.mlp_bias, pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, use_cache=config.use_cache,
        dtype=getattr(config, "dtype", None),
    )


def flat_name(module: str) -> str:
    """File stem of a shipped module: the auto_map names stay, others become ``softpick_ops_attention_naive``."""
    if module in REMOTE_MODULES:
        return module.rsplit(".", 1)[1]
    return module.replace(".", "_")


def relative_source(module: str) -> tuple[str, list[str]]:
    """The source of ``module`` with every ``from softpick... import`` made relative to a flat folder.

    Returns (new source, the softpick modules it imports after substitution). Plain ``import softpick.x``
    statements cannot be made relative and raise RuntimeError (the shipped code must not contain them).
    """
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"cannot find the source of {module}.")
    source = Path(spec.origin).read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    edits, deps = [], []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "softpick" for a in node.names):
            raise RuntimeError(f"{module} line {node.lineno}: write 'from softpick... import' for shipped code.")
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "softpick":
            target = SUBSTITUTES.get(node.module, node.module)
            if target != node.module:  # the shipped twin must have every name the shipped code takes
                missing = [a.name for a in node.names if not hasattr(importlib.import_module(target), a.name)]
                if missing:
                    raise RuntimeError(f"{module} line {node.lineno} imports {missing} from {node.module}, which "
                                       f"the shipped {target} does not define.")
            names = ", ".join(a.name if a.asname is None else f"{a.name} as {a.asname}" for a in node.names)
            indent = lines[node.lineno - 1][: node.col_offset]
            edits.append((node.lineno, node.end_lineno, f"{indent}from .{flat_name(target)} import {names}\n"))
            deps.append(target)
    for start, end, text in sorted(edits, reverse=True):
        lines[start - 1 : end] = [text]
    return "".join(lines), deps


def substitute_drift() -> list[str]:
    """Each function of a substitute (:data:`SUBSTITUTES`) whose signature differs from the one it replaces.

    Returns lines "module.name: shipped (...) vs public (...)"; empty when the shipped twins match exactly
    (parameter names, kinds, defaults and annotations).
    """
    drift = []
    for original, substitute in SUBSTITUTES.items():
        public, shipped = importlib.import_module(original), importlib.import_module(substitute)
        for name in shipped.__all__:
            want, have = inspect.signature(getattr(public, name)), inspect.signature(getattr(shipped, name))
            if want != have:
                drift.append(f"{substitute}.{name}: shipped {have} vs public {want}")
    return drift


def write_remote_code(out_dir: str | Path) -> list[str]:
    """Write the shipped modules (see the module docstring) into ``out_dir``; returns their file names.

    Raises RuntimeError (a bug in softpick, not a user error) when a shipped substitute's signature has
    drifted from the public function it stands for (:func:`substitute_drift`).
    """
    drift = substitute_drift()
    if drift:
        raise RuntimeError("the shipped naive ops no longer match the public ones: " + "; ".join(drift))
    out_dir = Path(out_dir)
    todo, done = list(REMOTE_MODULES), []
    while todo:
        module = todo.pop()
        if module in done:
            continue
        source, deps = relative_source(module)
        (out_dir / f"{flat_name(module)}.py").write_text(source, encoding="utf-8")
        done.append(module)
        todo.extend(deps)
    return sorted(f"{flat_name(m)}.py" for m in done)


def _save_tokenizer(tokenizer: Any, out_dir: Path) -> None:
    """save_pretrained, then name the tokenizer class in tokenizer_config.json (no model config needed)."""
    tokenizer.save_pretrained(str(out_dir))
    path = out_dir / "tokenizer_config.json"
    settings = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    settings.pop("auto_map", None)
    settings["tokenizer_class"] = type(tokenizer).__name__
    path.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


TRAINED_CONTEXT_KEY = "trained_context_len"
"""config.json key: the longest context (tokens) the model was trained at; ``softpick analyze`` evaluates at it."""


def set_trained_context(model_dir: str | Path, tokens: int) -> None:
    """Record in ``model_dir``/config.json that the model was trained at contexts of ``tokens`` (atomic
    rewrite). transformers keeps the key as a config attribute; other tools ignore it."""
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config[TRAINED_CONTEXT_KEY] = int(tokens)
    tmp = path.with_name("config.json.tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def save_portable(model: Any, out_dir: str | Path, *, tokenizer: Any = None, dtype: torch.dtype | None = None,
                  trained_context_len: int | None = None) -> Path:
    """Write ``model`` (and ``tokenizer``) to ``out_dir`` so that it loads without softpick; atomic.

    Args:
        model: a ``SoftpickForCausalLM`` or any transformers causal LM (saved as it is).
        out_dir: the folder to (re)write; a ``.tmp`` sibling is written first, then renamed.
        tokenizer: saved beside the model when given.
        dtype: cast the weights before saving (None keeps them).
        trained_context_len: the context (tokens) the model was trained at, written to config.json
            (:func:`set_trained_context`); None writes nothing.

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if dtype is not None:
        model = model.to(dtype)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Writing model shards" would cut into the training log and bar
    try:
        model.save_pretrained(str(tmp))
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    config = model.config
    if is_plain_softmax(config):
        for name in REMOTE_MODULES:
            (tmp / f"{flat_name(name)}.py").unlink(missing_ok=True)
        llama = llama_config(config)
        llama.dtype = next(model.parameters()).dtype
        llama.save_pretrained(str(tmp))
    elif getattr(config, "model_type", None) == "softpick_transformer":
        write_remote_code(tmp)
    if tokenizer is not None:
        _save_tokenizer(tokenizer, tmp)
    if trained_context_len is not None:
        set_trained_context(tmp, trained_context_len)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


__all__ = ["TRAINED_CONTEXT_KEY", "is_plain_softmax", "llama_config", "save_portable", "set_trained_context",
           "substitute_drift", "write_remote_code"]
