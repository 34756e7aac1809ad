"""Text for the analysis: read documents from a file, a folder or a dataset, tokenize and pad them.

A *sample* is the first ``seq_len`` tokens of one document (documents of fewer than two tokens are
skipped), so every sample starts at a document start, where attention sinks form. Batches carry an
``attention_mask`` (1 = real token) and ``position_ids`` that count real tokens only, so left and
right padding give the same numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from softpick.corpus.records import no_text_field, record_text, text_field
from softpick.corpus.tokenized import is_tokenized_dataset

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")


@dataclass
class Batch:
    """One padded batch.

    input_ids: [B, T] long (padding holds ``pad_id``); attention_mask: [B, T] long, 1 = real token;
    position_ids: [B, T] long, 0 at each sample's first real token; offset: index of the batch's
    first sample among all samples.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    offset: int

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device), self.offset
        )


def _texts_from_records(records: list, where: str) -> list[str]:
    texts = []
    for record in records:
        if isinstance(record, str):
            texts.append(record)
            continue
        text = record_text(record)
        if text is None:
            raise ValueError(f"{where}: each record needs a 'text' or 'content' field, got {str(record)[:80]!r}.")
        texts.append(text)
    return texts


def _read_file(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        # Documents are separated by blank lines.
        blocks = path.read_text(encoding="utf-8").split("\n\n")
        return [b.strip() for b in blocks if b.strip()]
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            return _texts_from_records([json.loads(line) for line in f if line.strip()], str(path))
    if suffix == ".json":
        records = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(records, dict):
            records = next((v for v in records.values() if isinstance(v, list)), [records])
        return _texts_from_records(records, str(path))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return _texts_from_records(pq.read_table(path).to_pylist(), str(path))
    raise ValueError(f"cannot read {path}: the suffix must be one of {TEXT_SUFFIXES}.")


def _read_dataset(name: str, split: str) -> list[str]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as error:  # datasets raises many types; the user needs the name and the reason
        raise FileNotFoundError(
            f"--data {name!r} is neither an existing file or folder nor a loadable dataset "
            f"(split {split!r}): {error}"
        ) from error
    field = text_field(dataset.column_names)
    if field is None:
        raise ValueError(no_text_field(f"dataset {name!r}", dataset.column_names))
    return list(dataset[field])


def load_documents(data: str | Path | None, split: str = "validation") -> list[str]:
    """Documents of ``data``, in order, empty ones dropped.

    Args:
        data: a .txt (documents separated by blank lines), .jsonl / .json / .parquet file (field
            "text" or "content"), a folder (a ``datasets.save_to_disk`` folder, or the files with those
            suffixes inside it, sorted by name; a file whose stem is ``split`` is preferred), a
            ``datasets`` name, or None for the embedded corpus (``softpick.corpus``).
        split: the split for datasets and the embedded corpus.
    """
    if data is None:
        from softpick.corpus import embedded_documents

        return embedded_documents(split)
    path = Path(data)
    if path.is_file():
        docs = _read_file(path)
    elif path.is_dir() and is_tokenized_dataset(path):
        text = path / "text" / f"{split}.jsonl"
        if not text.is_file():
            raise ValueError(f"--data {path} is a pre-tokenized folder of softpick data build (token ids, no "
                             f"{text.relative_to(path)}); pass the text files it was built from.")
        docs = _read_file(text)
    elif path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            import datasets

            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                loaded = loaded[split]
            field = text_field(loaded.column_names)
            if field is None:
                raise ValueError(no_text_field(str(path), loaded.column_names))
            docs = list(loaded[field])
        else:
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in TEXT_SUFFIXES)
            preferred = [p for p in files if p.stem == split]
            files = preferred or files
            if not files:
                raise FileNotFoundError(f"folder {path} holds no {'/'.join(TEXT_SUFFIXES)} file.")
            docs = [doc for f in files for doc in _read_file(f)]
    elif path.suffix.lower() in TEXT_SUFFIXES or str(data).startswith((".", "/")):
        raise FileNotFoundError(f"data file {path} does not exist.")
    else:
        docs = _read_dataset(str(data), split)
    docs = [d for d in docs if d and d.strip()]
    if not docs:
        raise ValueError(f"no non-empty document in {data}.")
    return docs


def tokenize_samples(tokenizer, documents: list[str], num_samples: int, seq_len: int) -> list[list[int]]:
    """Token ids of the first ``num_samples`` documents with at least two tokens, cut at ``seq_len``.

    The tokenizer's own special tokens are kept (e.g. a leading BOS). Raises ValueError when fewer
    than ``num_samples`` documents qualify.
    """
    if num_samples < 1 or seq_len < 2:
        raise ValueError(f"num_samples must be >= 1 and seq_len >= 2, got {num_samples} and {seq_len}.")
    samples: list[list[int]] = []
    for doc in documents:
        ids = tokenizer(doc, truncation=False)["input_ids"][:seq_len]
        if len(ids) >= 2:
            samples.append(list(ids))
        if len(samples) == num_samples:
            return samples
    raise ValueError(
        f"only {len(samples)} documents of at least two tokens were found, fewer than --num-samples {num_samples}."
    )


def make_batches(
    samples: list[list[int]], batch_size: int, *, padding_side: str = "right", pad_id: int = 0
) -> list[Batch]:
    """Pad consecutive groups of ``batch_size`` samples to their longest member.

    Padding positions get ``attention_mask`` 0 and ``position_ids`` 0; they are excluded by every
    measurement.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
    batches = []
    for start in range(0, len(samples), batch_size):
        group = samples[start : start + batch_size]
        width = max(len(s) for s in group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, sample in enumerate(group):
            cols = slice(width - len(sample), width) if padding_side == "left" else slice(0, len(sample))
            ids[row, cols] = torch.tensor(sample, dtype=torch.long)
            mask[row, cols] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0) * mask
        batches.append(Batch(ids, mask, positions, start))
    return batches
