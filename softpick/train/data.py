"""Training data: HF ``datasets`` -> online tokenization -> fixed windows or varlen rows, resumable.

Pipeline, per data-parallel rank:

1. :func:`load_documents` loads each ``--training.dataset`` entry (hub name, local folder, or a file
   type json/jsonl/parquet/txt/csv with ``--training.data_files``), keeps its ``text`` (or
   ``content``) column and mixes several with ``interleave_datasets(probabilities=data_probs)``.
   With no dataset the embedded corpus (:mod:`softpick.corpus`) is used, so runs work offline.
2. :class:`TokenWindows` shuffles documents with ``seed + epoch`` (an index permutation, or a buffer
   shuffle when streaming) and gives document ``p`` of an epoch to shard ``p % num_shards``; shards are
   (rank, loader worker) pairs. Each document is tokenized as ``[BOS] text [EOS]`` (the special tokens
   the tokenizer has), the token stream is concatenated and cut into batches:
   ``input_ids [B, seq_len]``; or with ``varlen`` one row ``[1, seq_len]`` plus ``cu_seqlens [N+1]``
   (int32) marking document starts, every piece cut to at most ``context_len`` tokens, the pieces'
   ``position_ids`` and a bucketed ``max_seqlen`` (see :func:`packed_batch_fields`). Documents run
   across batch boundaries (nothing is dropped or padded); the stream repeats for ever, one epoch after
   another. Labels are the inputs (the model shifts them).
3. :class:`ResumableLoader` wraps a torch DataLoader. Every batch carries the position of the first
   token not yet used by its worker (epoch, document, token offset); the loader keeps the latest one
   per worker, and ``state_dict()`` is therefore exact: a resumed run continues on the next token.
   Workers serve batches round-robin; on resume the workers' roles are rotated so that the worker due
   next serves first.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from softpick.corpus.records import no_text_field, text_field
from softpick.corpus.tokenized import TokenizedDocuments, encode_documents, is_tokenized_dataset
from softpick.errors import UserError
from softpick.hub import looks_like_repo_id, require_hub
from softpick.train.config import ConfigError, Training, split_list

FILE_BUILDERS = {"json": "json", "jsonl": "json", "parquet": "parquet", "txt": "text", "text": "text", "csv": "csv"}
"""``--training.dataset`` values that mean "load ``data_files`` with this datasets builder"."""

TOKENIZE_BATCH = 64
"""Documents tokenized per call to the tokenizer."""

SHUFFLE_BLOCK = 4096
"""Documents per block of the two-level shuffle (see :func:`shuffled_indices`)."""


def _root_cause(error: BaseException) -> str:
    """The first line of the innermost cause of ``error`` (datasets wraps the reader's own error)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip()
    if isinstance(error, StopIteration) or "corresponds to no data" in text:
        return "no rows (an empty file, or no file matches)"
    return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Silence the ``datasets`` loggers' error lines while loading (the UserError reports the failure)."""
    log = logging.getLogger("datasets")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _text_column(ds: Any, name: str) -> Any:
    columns = ds.column_names
    if columns is None:  # streaming datasets may not know their columns before reading
        try:
            columns = list(next(iter(ds)).keys())
        except StopIteration:
            raise ConfigError(f"dataset {name!r} holds no rows; give files with documents.") from None
        except Exception as err:  # noqa: BLE001 - any reader error of a bad file ends in one line
            raise ConfigError(f"cannot read dataset {name!r}: {_root_cause(err)}.") from None
    col = text_field(columns)
    if col is None:
        raise ConfigError(no_text_field(f"dataset {name!r}", columns))
    ds = ds.select_columns([col])
    return ds.rename_column(col, "text") if col != "text" else ds


def load_documents(cfg: Training, seed: int) -> Any:
    """The mixed document dataset (a ``datasets.Dataset``, or ``IterableDataset`` when streaming).

    Each row is ``{"text": str}``; a folder written by ``softpick data build`` gives its pre-tokenized
    documents instead (:class:`~softpick.corpus.tokenized.TokenizedDocuments`, memory-mapped). Mixing
    uses ``interleave_datasets`` with ``data_probs``, seeded, and ``stopping_strategy="all_exhausted"``.
    """
    import datasets

    names = split_list(cfg.dataset)
    tokenized = [name for name in names if is_tokenized_dataset(name)]
    if tokenized:
        if len(names) > 1:
            raise ConfigError(f"a pre-tokenized dataset ({tokenized[0]}) cannot be mixed with other datasets.")
        try:
            return TokenizedDocuments(names[0], cfg.dataset_split or "train")
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if not names:
        from softpick.corpus import embedded_documents

        docs = datasets.Dataset.from_dict({"text": embedded_documents("train")})
        return docs.to_iterable_dataset(num_shards=1) if cfg.streaming else docs
    n = len(names)

    def per(key: str) -> list[str | None]:
        items = split_list(getattr(cfg, key))
        return [item or None for item in items] if items else [None] * n

    configs, splits, dirs, files = per("dataset_name"), per("dataset_split"), per("data_dir"), per("data_files")
    parts = []
    for name, config, split, data_dir, data_files in zip(names, configs, splits, dirs, files):
        builder = FILE_BUILDERS.get(name, name)
        if name in FILE_BUILDERS and data_files is None:
            raise ConfigError(f"training.dataset {name!r} reads files: give them with --training.data_files.")
        if name not in FILE_BUILDERS and looks_like_repo_id(name):
            try:
                require_hub("training.dataset", name)  # seconds, instead of datasets' retries when offline
            except UserError as err:
                raise ConfigError(str(err)) from None
        try:
            with _quiet_datasets():  # its reader logs each bad file before raising: the one line below says it
                ds = datasets.load_dataset(
                    builder, name=config, data_dir=data_dir, data_files=data_files,
                    split=split or "train", streaming=cfg.streaming,
                )
        except (OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as err:  # OSError: offline hub
            raise ConfigError(f"cannot load dataset {name!r}: {(str(err).splitlines() or [''])[0]} "
                              f"({_root_cause(err)}).") from None
        except Exception as err:  # noqa: BLE001 - DatasetGenerationError & co: a file the reader cannot parse
            what = f" (data_files {data_files})" if data_files else ""
            raise ConfigError(f"cannot read dataset {name!r}{what}: {_root_cause(err)}; give UTF-8 files of "
                              f"the type named (json lines need one object per line).") from None
        parts.append(_text_column(ds, name))
    if n == 1:
        return parts[0]
    if not cfg.streaming:
        parts = [p.cast_column("text", datasets.Value("string")) for p in parts]
    probs = [float(p) for p in split_list(cfg.data_probs)]
    return datasets.interleave_datasets(
        parts, probabilities=probs, seed=seed, stopping_strategy="all_exhausted"
    )


def shuffled_indices(n: int, *, seed: int, epoch: int, shard: int = 0, shards: int = 1, start: int = 0) -> Iterator[int]:
    """Document indices of one epoch in shuffled order: positions ``shard + i * shards`` for i >= start.

    Two-level shuffle that needs O(SHUFFLE_BLOCK + n / SHUFFLE_BLOCK) memory (a full permutation of
    100M documents would take 0.8 GB in every loader worker): the documents are dealt into
    ``ceil(n / SHUFFLE_BLOCK)`` interleaved blocks (block b holds documents b, b + blocks, b + 2 blocks,
    ...), the order of the blocks is permuted, then the documents inside each block (seeded by seed,
    epoch and block). Interleaving makes every block a sample of the whole dataset, so a dataset
    stored grouped by source (one package, book or site after another) is mixed from the first batch.
    """
    blocks = -(-n // SHUFFLE_BLOCK)
    order = np.random.default_rng([seed, epoch]).permutation(blocks)  # [blocks]
    sizes = (n - order + blocks - 1) // blocks  # documents in each block, in epoch order
    ends = np.cumsum(sizes)  # epoch position after each block
    first = shard + start * shards
    for k in range(int(np.searchsorted(ends, first, side="right")), blocks):
        begin = int(ends[k] - sizes[k])
        inner = np.random.default_rng([seed, epoch, int(order[k])]).permutation(int(sizes[k]))
        j0 = max((shard - begin) % shards, first - begin)  # first block position of this shard, >= first
        for j in inner[j0::shards]:
            yield int(order[k]) + int(j) * blocks


@dataclass
class ShardPosition:
    """Where a shard's next unused token is: document ``doc`` (index within the shard's share of
    epoch ``epoch``), token ``offset`` of that document's token list."""

    epoch: int = 0
    doc: int = 0
    offset: int = 0


class TokenWindows(IterableDataset):
    """Infinite stream of token batches from one data-parallel rank's share of the documents.

    Args:
        docs: output of :func:`load_documents`.
        tokenizer: an HF tokenizer (its bos/eos ids are added around each document).
        seq_len, batch_size: each batch is ``[batch_size, seq_len]`` (batch_size 1 with varlen).
        varlen, context_len: pack into one row with ``cu_seqlens``; pieces at most context_len long.
        rank, world: this rank's index among the data-parallel ranks.
        seed: shuffling seed (epoch e uses seed + e).

    Yields dicts: ``input_ids`` (int64 [B, T]), with varlen the fields of :func:`packed_batch_fields`,
    and ``position`` = (logical worker, :class:`ShardPosition` after this batch).
    """

    def __init__(
        self, docs: Any, tokenizer: Any, *, seq_len: int, batch_size: int = 1, varlen: bool = False,
        context_len: int | None = None, rank: int = 0, world: int = 1, seed: int = 42,
    ):
        self.docs, self.tokenizer = docs, tokenizer
        self.seq_len, self.batch_size, self.varlen = seq_len, batch_size, varlen
        self.context_len = context_len or seq_len
        self.rank, self.world, self.seed = rank, world, seed
        self.streaming = not hasattr(docs, "__len__")
        self.pretokenized = isinstance(docs, TokenizedDocuments)
        self.num_workers = 1
        self.positions: dict[int, ShardPosition] = {}
        self.rotation = 0

    # -- documents -------------------------------------------------------------------------------
    def _epoch_docs(self, epoch: int, shard: int, shards: int, start: int) -> Iterator[str | np.ndarray]:
        """Texts (token arrays for a pre-tokenized dataset) of the shard's documents of ``epoch`` from
        shard-local index ``start`` on."""
        if self.streaming:
            ds = self.docs.shuffle(seed=self.seed, buffer_size=10_000)
            ds.set_epoch(epoch)
            # .iter() reads every document in every worker (no datasets-side worker split), so
            # the p % shards rule below is the only split and stays the same for any worker count
            texts = (text for rows in ds.iter(batch_size=TOKENIZE_BATCH) for text in rows["text"])
            yield from itertools.islice(texts, shard + start * shards, None, shards)
            return
        indices = shuffled_indices(len(self.docs), seed=self.seed, epoch=epoch, shard=shard, shards=shards,
                                   start=start)
        for chunk in iter(lambda: list(itertools.islice(indices, TOKENIZE_BATCH)), []):
            if self.pretokenized:
                yield from self.docs.take(chunk)
                continue
            try:
                texts = self.docs[chunk]["text"]
            except Exception as err:  # noqa: BLE001 - a row the reader cannot decode: one line, not a traceback
                raise ConfigError(f"cannot read a document of the training data (epoch {epoch}): {_root_cause(err)}; "
                                  f"give UTF-8 files.") from None
            yield from texts

    def _encode(self, texts: list[str | np.ndarray]) -> list[np.ndarray]:
        """[BOS] ids [EOS] of each text (pre-tokenized documents already carry them)."""
        return texts if self.pretokenized else encode_documents(self.tokenizer, texts)

    def _token_stream(self, shard: int, shards: int, pos: ShardPosition) -> Iterator[tuple[int, int, int, np.ndarray]]:
        """(epoch, doc, offset, tokens from offset) for every document from ``pos`` on, for ever."""
        epoch, start, offset = pos.epoch, pos.doc, pos.offset
        while True:
            texts = self._epoch_docs(epoch, shard, shards, start)
            doc = start
            for batch in iter(lambda: list(itertools.islice(texts, TOKENIZE_BATCH)), []):
                for ids in self._encode(batch):
                    yield epoch, doc, offset, ids[offset:]
                    doc, offset = doc + 1, 0
            if doc == 0:
                raise ConfigError(
                    f"data shard {shard} of {shards} got no documents: the dataset is smaller than the "
                    "number of data-parallel ranks x loader workers."
                )
            epoch, start = epoch + 1, 0

    # -- batches ---------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        physical, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.num_workers:
            raise RuntimeError(f"TokenWindows was set up for {self.num_workers} workers, runs with {workers}.")
        logical = (physical + self.rotation) % workers
        shards = self.world * workers
        shard = self.rank * workers + logical
        stream = self._token_stream(shard, shards, self.positions.get(logical, ShardPosition()))
        need = self.batch_size * self.seq_len
        # pending pieces: (epoch, doc, offset of piece start, tokens)
        pending: list[tuple[int, int, int, np.ndarray]] = []
        have = 0
        while True:
            while have < need:
                piece = next(stream)
                pending.append(piece)
                have += len(piece[3])
            taken: list[np.ndarray] = []
            lengths: list[int] = []
            left = need
            while left:
                epoch, doc, offset, toks = pending[0]
                use = min(left, len(toks))
                taken.append(toks[:use])
                lengths.append(use)
                if use == len(toks):
                    pending.pop(0)
                else:
                    pending[0] = (epoch, doc, offset + use, toks[use:])
                left -= use
            have -= need
            if not pending:  # the batch ended on a document boundary: its position is the next one
                pending.append(next(stream))
                have += len(pending[0][3])
            epoch, doc, offset, _ = pending[0]
            batch = {
                "input_ids": torch.from_numpy(np.concatenate(taken)).view(self.batch_size, self.seq_len),
                "position": (logical, ShardPosition(epoch, doc, offset)),
            }
            if self.varlen:
                batch.update(packed_batch_fields(lengths, self.context_len))
            yield batch


def cu_seqlens_from_lengths(lengths: list[int], context_len: int) -> torch.Tensor:
    """Cumulative piece boundaries (int32 [N+1], starting at 0) after cutting each length to at most
    ``context_len``: e.g. lengths [5, 3], context_len 4 -> pieces [4, 1, 3] -> [0, 4, 5, 8]."""
    pieces = []
    for n in lengths:
        full, rest = divmod(n, context_len)
        pieces += [context_len] * full + ([rest] if rest else [])
    return torch.tensor(np.cumsum([0] + pieces), dtype=torch.int32)


def max_seqlen_bucket(longest: int, context_len: int) -> int:
    """The ``max_seqlen`` passed to the kernels for a longest piece of ``longest`` tokens: the next power
    of two (at least 256), at most ``context_len``. An upper bound is all the kernels need (it sizes their
    grid); a few values instead of one per step keep torch.compile from specializing on each."""
    return min(context_len, max(256, 1 << (longest - 1).bit_length()))


def packed_batch_fields(lengths: list[int], context_len: int) -> dict[str, Any]:
    """What a varlen batch carries besides ``input_ids``, all made on the host (the step reads nothing
    back from the GPU): ``cu_seqlens`` (int32 [N+1], see :func:`cu_seqlens_from_lengths`),
    ``position_ids`` (int64 [1, T], restarting at 0 in each piece) and ``max_seqlen`` (int64 [], the
    bucketed longest piece, see :func:`max_seqlen_bucket`)."""
    cu_seqlens = cu_seqlens_from_lengths(lengths, context_len)
    bounds = cu_seqlens.numpy().astype(np.int64)
    pieces = np.diff(bounds)
    positions = np.arange(bounds[-1], dtype=np.int64) - np.repeat(bounds[:-1], pieces)
    return {"cu_seqlens": cu_seqlens, "position_ids": torch.from_numpy(positions)[None],
            "max_seqlen": torch.tensor(max_seqlen_bucket(int(pieces.max()), context_len))}


def _worker_errors_as_one_line(loader: DataLoader) -> Iterator[dict[str, Any]]:
    """The batches of ``loader``; a UserError raised in a loader worker (re-raised by torch with the
    worker's traceback in its message) comes out as the worker's own one-line message."""
    try:
        yield from loader
    except UserError as err:
        text = str(err)
        if "Original Traceback" not in text:
            raise
        last = text.strip().splitlines()[-1]
        raise type(err)(last.split(": ", 1)[1] if ": " in last else last) from None


class ResumableLoader:
    """A DataLoader over :class:`TokenWindows` whose position can be saved and restored exactly.

    ``state_dict()`` -> ``{"positions": {worker: [epoch, doc, offset]}, "served": n, "num_workers": W,
    "world": data-parallel ranks}``. Positions only make sense for the same sharding, so a state saved
    with another number of data-parallel ranks or workers is refused with a clear error.
    Batches (without the ``position`` entry) come from ``iter(loader)``.
    """

    def __init__(self, dataset: TokenWindows, *, num_workers: int = 0, prefetch_factor: int = 2, pin_memory: bool = False):
        self.dataset = dataset
        self.num_workers, self.prefetch_factor, self.pin_memory = num_workers, prefetch_factor, pin_memory
        self.dataset.num_workers = max(num_workers, 1)
        self.served = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        workers = self.dataset.num_workers
        self.dataset.rotation = self.served % workers
        if self.num_workers:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        loader = DataLoader(
            self.dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
            persistent_workers=False,
        )
        for batch in _worker_errors_as_one_line(loader):
            logical, pos = batch.pop("position")
            self.dataset.positions[logical] = pos
            self.served += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        positions = {str(w): [p.epoch, p.doc, p.offset] for w, p in self.dataset.positions.items()}
        return {"positions": positions, "served": self.served, "num_workers": self.dataset.num_workers,
                "world": self.dataset.world}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["num_workers"]) != self.dataset.num_workers:
            raise ConfigError(
                f"the checkpoint's data loader used {int(state['num_workers'])} worker(s) but this run uses "
                f"{self.dataset.num_workers}; resume with --training.num_workers {int(state['num_workers'])}."
            )
        world = int(state.get("world", self.dataset.world))
        if world != self.dataset.world:
            raise ConfigError(
                f"the checkpoint's data loader was sharded over {world} data-parallel rank(s) but this run has "
                f"{self.dataset.world}; its position does not carry over: resume with "
                "--checkpoint.exclude_from_loading dataloader to restart the data stream."
            )
        self.served = int(state["served"])
        self.dataset.positions = {int(w): ShardPosition(*map(int, p)) for w, p in state["positions"].items()}


def check_has_text(docs: Any, name: str, look: int = 100_000) -> None:
    """ConfigError when the documents hold no text (no rows, or only empty and whitespace-only ones):
    such a run would train on BOS/EOS pairs and export a model that learnt nothing. Reads until the
    first document with text (at most ``look`` rows of a streaming dataset)."""
    rows = 0
    try:
        if hasattr(docs, "__len__"):
            for start in range(0, len(docs), 1000):
                texts = docs[start:start + 1000]["text"]
                rows += len(texts)
                if any(isinstance(t, str) and t.strip() for t in texts):
                    return
        else:
            for row in itertools.islice(docs, look):
                rows += 1
                if isinstance(row["text"], str) and row["text"].strip():
                    return
            if rows == look:
                return
    except Exception as err:  # noqa: BLE001 - a reader error (e.g. Latin-1 bytes) of a bad file: one line
        raise ConfigError(f"cannot read training.dataset {name!r}: {_root_cause(err)}; give UTF-8 files.") from None
    what = "no rows" if rows == 0 else f"{rows} rows, all empty or whitespace"
    raise ConfigError(f"training.dataset {name!r} holds no text ({what}): nothing would be learnt; give files "
                      f"with documents in their text (or content) field.")


def build_loader(cfg: Training, tokenizer: Any, *, rank: int, world: int, seed: int) -> ResumableLoader:
    """The resumable loader for data-parallel rank ``rank`` of ``world``."""
    docs = load_documents(cfg, seed)
    if isinstance(docs, TokenizedDocuments) and docs.meta["vocab_size"] != len(tokenizer):
        raise ConfigError(
            f"training.dataset {cfg.dataset!r} was tokenized with a {docs.meta['vocab_size']}-token vocabulary but "
            f"the tokenizer has {len(tokenizer)}; pass --model.tokenizer_path {Path(cfg.dataset) / 'tokenizer'}."
        )
    if not isinstance(docs, TokenizedDocuments):
        check_has_text(docs, cfg.dataset or "the embedded corpus")
    shards = world * max(cfg.num_workers, 1)
    if hasattr(docs, "__len__") and len(docs) < shards:
        raise ConfigError(f"training.dataset has {len(docs)} document(s), fewer than the {shards} data shards "
                          f"({world} data-parallel rank(s) x {max(cfg.num_workers, 1)} loader worker(s)); lower "
                          f"--training.num_workers or give more documents.")
    dataset = TokenWindows(
        docs, tokenizer, seq_len=cfg.seq_len, batch_size=cfg.batch_size, varlen=cfg.varlen,
        context_len=cfg.context_len, rank=rank, world=world, seed=seed,
    )
    return ResumableLoader(
        dataset, num_workers=cfg.num_workers, prefetch_factor=cfg.prefetch_factor, pin_memory=cfg.pin_memory
    )
