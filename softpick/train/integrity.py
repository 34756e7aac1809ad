"""What a checkpoint folder must hold to be loaded: its manifest, its model config, its tensor shapes.

Each ``step-N`` folder gets, when its save is complete:

- ``model_config.json``: the model config it was trained with (``PretrainedConfig.to_dict()``). On
  resume it is compared with the run's config field by field (:func:`config_differences`), leaving out
  fields that do not change the weights or their meaning (:data:`RUNTIME_FIELDS`).
- ``manifest.json``: every file of the folder with its size in bytes and its xxh3-64 hash. xxh3
  hashes about 25 GB/s on one core, so reading the file dominates: 2 to 4 GiB/s from the page cache
  on a 2-core AMD EPYC (a 1 GiB file), and each rank hashes a share of the files. :func:`verify` recomputes both, so a truncated or deleted
  file, a garbled ``.metadata`` and random bytes written into the weights are all caught.

:func:`model_mismatch` compares the tensors a checkpoint holds under ``model.`` with the model's own
state dict (names and global shapes): loading is strict, with or without a saved config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import xxhash

MANIFEST = "manifest.json"
MODEL_CONFIG = "model_config.json"
CHUNK = 1 << 20  # bytes read at a time while hashing (1 MiB read fastest here)

RUNTIME_FIELDS = frozenset({
    "transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype", "use_cache",
    "attn_impl", "_attn_implementation", "_attn_implementation_autoset", "output_attentions",
    "output_hidden_states", "return_dict", "initializer_range", "_commit_hash", "auto_map", "trained_context_len",
})
"""Model config fields that may differ between the checkpoint and the run that resumes it: the kernel
choice (``attn_impl``), the init scale (the checkpoint replaces the init), bookkeeping (the context an
export was trained at)."""


def file_digest(path: Path) -> dict[str, Any]:
    """``{"size": bytes, "xxh3_64": hex}`` of one file (read into one reused buffer)."""
    digest, buffer, size = xxhash.xxh3_64(), memoryview(bytearray(CHUNK)), 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(buffer[:n])
            size += n
    return {"size": size, "xxh3_64": digest.hexdigest()}


def share(names: list[str], rank: int, world: int) -> list[str]:
    """The names rank ``rank`` of ``world`` hashes (every world-th of the sorted names)."""
    return sorted(names)[rank::world]


def folder_files(folder: Path) -> list[str]:
    """The files of a checkpoint folder that the manifest covers (all but the manifest)."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, digests: dict[str, dict[str, Any]], step: int) -> None:
    """Write ``manifest.json`` from the digests of every file (gathered from all ranks)."""
    body = {"format": 1, "step": step, "hash": "xxh3_64", "files": dict(sorted(digests.items()))}
    (folder / MANIFEST).write_text(json.dumps(body, indent=1))


def read_manifest(folder: Path) -> dict[str, dict[str, Any]] | None:
    """``name -> {"size", "xxh3_64"}`` from the manifest; None when there is none; ValueError when garbled."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text())["files"]
        return {str(k): {"size": int(v["size"]), "xxh3_64": str(v["xxh3_64"])} for k, v in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{MANIFEST} is not readable") from None


def verify(folder: Path, manifest: dict[str, dict[str, Any]], names: list[str]) -> list[str]:
    """Problems with the files ``names`` of ``folder`` against ``manifest`` (empty: all good).

    Sizes are checked for every listed file (cheap); hashes only for ``names`` (this rank's share).
    """
    problems = []
    for name, expected in manifest.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != expected["size"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, not {expected['size']}")
    bad = {p.split(" ")[0] for p in problems}
    for name in names:
        if name in manifest and name not in bad and file_digest(folder / name)["xxh3_64"] != manifest[name]["xxh3_64"]:
            problems.append(f"{name} has changed bytes (checksum mismatch)")
    return problems


def config_differences(saved: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    """``"field saved -> current"`` for each model config field that differs (a field missing on one
    side counts as its default from ``defaults``), RUNTIME_FIELDS left out."""
    out = []
    for key in sorted((set(saved) | set(current)) - RUNTIME_FIELDS):
        a, b = saved.get(key, defaults.get(key)), current.get(key, defaults.get(key))
        if a != b:
            out.append(f"{key} {a!r} -> {b!r}")
    return out


def model_mismatch(saved_shapes: dict[str, tuple[int, ...]], model_shapes: dict[str, tuple[int, ...]],
                   shown: int = 3) -> str | None:
    """One phrase naming missing, unexpected and wrongly shaped tensors (None when the two agree)."""
    missing = sorted(set(model_shapes) - set(saved_shapes))
    unexpected = sorted(set(saved_shapes) - set(model_shapes))
    shapes = [f"{k} {list(saved_shapes[k])} vs {list(model_shapes[k])}" for k in sorted(set(saved_shapes) & set(model_shapes))
              if tuple(saved_shapes[k]) != tuple(model_shapes[k])]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" and {len(items) - shown} more" if len(items) > shown else ""
            parts.append(f"{label}: {', '.join(items[:shown])}{more}")
    return "; ".join(parts) or None
