"""Pre-tokenized datasets on disk: memory-mapped token files the trainer reads without tokenizing.

Layout of a dataset folder written by :class:`TokenizedWriter` (``softpick data build``)::

    DIR/softpick_tokens.json       format, dtype, vocab size, splits with document and token counts
    DIR/tokenizer/                 the tokenizer that made the ids (save_pretrained)
    DIR/<split>/tokens.bin         every document's ids, [BOS] ids [EOS], back to back (uint16 when the
                                   vocabulary fits, else uint32)
    DIR/<split>/offsets.npy        int64 [documents + 1]: document i is tokens[offsets[i]:offsets[i + 1]]

:class:`TokenizedDocuments` opens one split lazily (each DataLoader worker maps the file itself; nothing
is copied when the object is pickled).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

META_FILE = "softpick_tokens.json"
FORMAT = "softpick-tokens-1"


def is_tokenized_dataset(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :class:`TokenizedWriter`."""
    return (Path(path) / META_FILE).is_file()


def read_meta(folder: str | Path) -> dict[str, Any]:
    try:
        meta = json.loads((Path(folder) / META_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{Path(folder) / META_FILE} is not valid json ({err}); build the dataset again.") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{Path(folder) / META_FILE} must hold a json object; build the dataset again.")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{Path(folder) / META_FILE} has format {meta.get('format')!r}, expected {FORMAT!r}.")
    return meta


def encode_documents(tokenizer: Any, texts: list[str], dtype: Any = np.int64) -> list[np.ndarray]:
    """``[BOS] ids [EOS]`` of each text as an array (the special tokens the tokenizer has)."""
    head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    tail = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return [np.asarray(head + ids + tail, dtype=dtype) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


class TokenizedWriter:
    """Append documents' token ids to per-split files; ``close()`` writes the offsets and the metadata.

    Args:
        folder: output folder (created; an existing dataset there is overwritten).
        tokenizer: an HF tokenizer; BOS and EOS (when it has them) wrap every document.
        batch_size: documents per tokenizer call (the fast tokenizers parallelise inside a call).
    """

    def __init__(self, folder: str | Path, tokenizer: Any, batch_size: int = 1000):
        self.folder, self.tokenizer, self.batch_size = Path(folder), tokenizer, batch_size
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.uint32
        self.files: dict[str, Any] = {}
        self.offsets: dict[str, list[int]] = {}
        self.pending: dict[str, list[str]] = {}

    def add(self, split: str, text: str) -> None:
        self.pending.setdefault(split, []).append(text)
        if len(self.pending[split]) >= self.batch_size:
            self._flush(split)

    def _flush(self, split: str) -> None:
        texts = self.pending.pop(split, [])
        if not texts:
            return
        if split not in self.files:
            (self.folder / split).mkdir(exist_ok=True)
            self.files[split] = open(self.folder / split / "tokens.bin", "wb")
            self.offsets[split] = [0]
        offsets = self.offsets[split]
        for doc in encode_documents(self.tokenizer, texts, self.dtype):
            self.files[split].write(doc.tobytes())
            offsets.append(offsets[-1] + len(doc))

    def close(self, extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Finish every split; returns the metadata written to ``softpick_tokens.json``."""
        for split in list(self.pending):
            self._flush(split)
        splits = {}
        for split, f in self.files.items():
            f.close()
            offsets = np.asarray(self.offsets[split], dtype=np.int64)
            np.save(self.folder / split / "offsets.npy", offsets)
            splits[split] = {"documents": len(offsets) - 1, "tokens": int(offsets[-1])}
        self.tokenizer.save_pretrained(str(self.folder / "tokenizer"))
        meta = {"format": FORMAT, "dtype": np.dtype(self.dtype).name, "vocab_size": len(self.tokenizer),
                "bos_token_id": self.tokenizer.bos_token_id, "eos_token_id": self.tokenizer.eos_token_id,
                "splits": splits, **(extra_meta or {})}
        (self.folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return meta


class TokenizedDocuments:
    """One split of a tokenized dataset as a sequence of documents (int arrays with BOS and EOS).

    ``len(docs)`` documents; ``docs.take(indices)`` -> list of np.ndarray (int64).
    """

    def __init__(self, folder: str | Path, split: str = "train"):
        self.folder, self.split = Path(folder), split
        self.meta = read_meta(folder)
        if not isinstance(self.meta.get("splits"), dict) or "dtype" not in self.meta:
            raise ValueError(f"{self.folder / META_FILE} lacks 'splits' or 'dtype'; build the dataset again.")
        if split not in self.meta["splits"]:
            raise ValueError(f"tokenized dataset {folder} has no split {split!r} (it has {sorted(self.meta['splits'])}).")
        self.offsets = self._check(split)
        self._tokens: np.memmap | None = None

    def _check(self, split: str) -> np.ndarray:
        """The split's document offsets, after checking them against ``tokens.bin``; ValueError naming the
        damaged file otherwise (a truncated file would silently cut documents)."""
        where = self.folder / split
        try:
            offsets = np.load(where / "offsets.npy")
            itemsize = np.dtype(self.meta["dtype"]).itemsize
            size = (where / "tokens.bin").stat().st_size
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(f"tokenized dataset {self.folder} is damaged ({type(err).__name__}: {err}); build it "
                             f"again with softpick data build.") from None
        ok = offsets.ndim == 1 and len(offsets) >= 1 and offsets[0] == 0 and bool(np.all(np.diff(offsets) >= 0))
        if not ok or size != int(offsets[-1]) * itemsize:
            raise ValueError(f"tokenized dataset {self.folder} is damaged ({where / 'tokens.bin'} has {size} bytes, "
                             f"its offsets.npy says {int(offsets[-1]) * itemsize if ok else 'nothing readable'}); "
                             f"build it again with softpick data build.")
        return offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def _map(self) -> np.memmap:
        if self._tokens is None:
            self._tokens = np.memmap(self.folder / self.split / "tokens.bin", dtype=self.meta["dtype"], mode="r")
        return self._tokens

    def take(self, indices: list[int]) -> list[np.ndarray]:
        tokens = self._map()
        return [np.asarray(tokens[self.offsets[i]:self.offsets[i + 1]], dtype=np.int64) for i in indices]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokens": None}  # each process maps the file itself
