"""The embedded corpus as train/validation document lists and as JSON-lines files.

The train split is the documents of seeds 0, 1, ..., the validation split those of seeds from
``VALIDATION_SEED_OFFSET`` on, minus any text that also occurs in the train split, so the two splits
never share a document.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from softpick.errors import BadValue
from softpick.corpus.generator import generate_document

CORPUS_VERSION = "2"
"""Bump whenever the generator's output changes (it keys the tokenizer cache)."""

SPLIT_SIZES = {"train": 4000, "validation": 200}
"""Number of documents per split (about 2.9 MB and 0.15 MB of text)."""

VALIDATION_SEED_OFFSET = 10_000_000


@functools.lru_cache(maxsize=None)
def _split(split: str) -> tuple[str, ...]:
    if split == "train":
        return tuple(generate_document(seed) for seed in range(SPLIT_SIZES["train"]))
    train = set(_split("train"))
    docs: list[str] = []
    seed = VALIDATION_SEED_OFFSET
    while len(docs) < SPLIT_SIZES["validation"]:
        doc = generate_document(seed)
        if doc not in train:
            docs.append(doc)
        seed += 1
    return tuple(docs)


def embedded_documents(split: str = "train", num_documents: int | None = None) -> list[str]:
    """The first ``num_documents`` documents (all when None) of the embedded corpus split.

    Args:
        split: "train" (4000 documents) or "validation" (200 documents, disjoint from train).
        num_documents: how many documents to return, 1 <= num_documents <= the split's size.

    Returns:
        A new list of strings; the same on every machine and Python version.
    """
    if split not in SPLIT_SIZES:
        raise BadValue(f"split must be one of {tuple(SPLIT_SIZES)}, got {split!r}.")
    size = SPLIT_SIZES[split]
    if num_documents is None:
        num_documents = size
    if not 1 <= num_documents <= size:
        raise BadValue(f"num_documents must be between 1 and {size} for split {split!r}, got {num_documents}.")
    return list(_split(split)[:num_documents])


def write_embedded_dataset(out_dir: str | Path) -> Path:
    """Write ``train.jsonl`` and ``validation.jsonl`` (one ``{"text": ...}`` object a line).

    The files load with ``datasets.load_dataset("json", data_files={"train": ..., ...})``.
    Returns ``out_dir`` as a Path (created if missing).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLIT_SIZES:
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for doc in _split(split):
                f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
    return out
