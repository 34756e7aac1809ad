"""Documents from local files: read, clean, deduplicate and split into train / validation.

Readers by suffix (a trailing ``.gz``, ``.dz``, ``.bz2`` or ``.xz`` is decompressed first):

- ``.txt``, ``.md``, ``.rst``, ``.pod``, ``.info``, ``.dict``: the file, cut into documents at blank lines once a piece exceeds
  ``max_chars`` (a book becomes several documents, a short note one);
- ``.html``, ``.htm``: the visible text (``script`` and ``style`` dropped), block elements as
  paragraph breaks;
- ``.jsonl``, ``.json``: the ``text`` (or ``content``) field of each record;
- ``.parquet``: the ``text`` (or ``content``) column.

Cleaning (:func:`clean`): Unicode NFC, control characters removed, runs of spaces and of blank lines
collapsed; a document is kept when it has at least ``min_chars`` characters and at least
``min_letter_share`` of its non-space characters are letters (which drops code listings, tables
and binary junk). Deduplication is exact, on the lower-cased text with whitespace collapsed
(near-duplicates across the split are handled by ``softpick data build``, :mod:`softpick.corpus.overlap`).
The validation split takes the documents whose content hash falls in the first ``val_fraction`` of
the hash range, so the split does not depend on the order or the number of input files.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import hashlib
import html.parser
import io
import json
import lzma
import multiprocessing
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from softpick.errors import BadValue, MissingFile
from softpick.corpus.records import no_text_field, record_text, text_field

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".pod", ".info", ".dict")
HTML_SUFFIXES = (".html", ".htm")
RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")
OPENERS = {".gz": gzip.open, ".dz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}  # .dz: dictzip, gzip-compatible
SUFFIXES = TEXT_SUFFIXES + HTML_SUFFIXES + RECORD_SUFFIXES
BLOCK_TAGS = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "table", "tr",
              "section", "article", "blockquote", "dd", "dt", "title"}


def _kind(path: Path) -> tuple[str, str | None]:
    """(content suffix, compression suffix or None) of a file name."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in OPENERS else None
    return (suffixes[-1] if suffixes else ""), compression


def find_files(inputs: Iterable[str | Path]) -> list[Path]:
    """Every readable file under ``inputs`` (files or folders, searched recursively), sorted."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise MissingFile(f"input {path} does not exist.")
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        found += [p for p in candidates if _kind(p)[0] in SUFFIXES]
    return sorted(set(found))


class _VisibleText(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.skip += 1
        elif tag in BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.skip = max(0, self.skip - 1)
        elif tag in BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """The visible text of an HTML page, block elements separated by blank lines."""
    parser = _VisibleText()
    parser.feed(markup)
    parser.close()
    return "".join(parser.parts)


def split_long(text: str, max_chars: int) -> list[str]:
    """Cut ``text`` at blank lines into pieces of at most about ``max_chars`` characters."""
    if len(text) <= max_chars:
        return [text]
    pieces, current, size = [], [], 0
    for paragraph in re.split(r"\n\s*\n", text):
        if current and size + len(paragraph) > max_chars:
            pieces.append("\n\n".join(current))
            current, size = [], 0
        current.append(paragraph)
        size += len(paragraph) + 2
    if current:
        pieces.append("\n\n".join(current))
    return pieces


def _records(path: Path, content: str, raw: bytes) -> Iterator[str]:
    if content == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(raw))
        except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise BadValue(f"{path} is not valid parquet ({' '.join(str(err).split())[:200]}).") from None
        column = text_field(table.column_names)
        if column is None:
            raise BadValue(no_text_field(str(path), table.column_names))
        yield from (t for t in table.column(column).to_pylist() if isinstance(t, str))
        return
    text = raw.decode("utf-8", errors="replace")
    try:
        if content == ".json":  # one document: a list of records or a single record
            data = json.loads(text)
            records = data if isinstance(data, list) else [data]
        else:  # JSON lines
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise BadValue(f"{path} is not valid {content[1:]} ({err.msg} at line {err.lineno}).") from None
    for record in records:
        value = record_text(record)
        if value is not None:
            yield value


def read_file(path: Path, max_chars: int = 20_000) -> Iterator[str]:
    """The raw documents of one file (see the module docstring for the readers)."""
    content, compression = _kind(path)
    opener = OPENERS.get(compression, open)
    with opener(path, "rb") as f:
        raw = f.read()
    if content in RECORD_SUFFIXES:
        yield from _records(path, content, raw)
        return
    text = raw.decode("utf-8", errors="replace")
    if content in HTML_SUFFIXES:
        text = html_to_text(text)
    yield from split_long(text, max_chars)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean(text: str, *, min_chars: int = 200, min_letter_share: float = 0.6) -> str | None:
    """The cleaned document, or None when it is too short or not mostly prose."""
    text = _CONTROL.sub("", unicodedata.normalize("NFC", text))
    lines = [re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in text.splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    if len(text) < min_chars:
        return None
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    if letters < min_letter_share * len(visible):
        return None
    return text


def fingerprint(text: str) -> str:
    """Hash of the lower-cased text with whitespace collapsed (exact-duplicate key)."""
    return hashlib.sha1(" ".join(text.lower().split()).encode("utf-8")).hexdigest()


def is_validation(key: str, val_fraction: float) -> bool:
    """Whether the document with fingerprint ``key`` belongs to the validation split."""
    return int(key[:8], 16) < val_fraction * 16**8


@dataclass
class GatherStats:
    """What :func:`gather_documents` read and kept."""

    files: int = 0
    raw_documents: int = 0
    rejected: int = 0
    duplicates: int = 0
    kept: dict[str, int] = field(default_factory=lambda: {"train": 0, "validation": 0})
    chars: dict[str, int] = field(default_factory=lambda: {"train": 0, "validation": 0})


def gather_documents(
    inputs: Iterable[str | Path], *, min_chars: int = 200, min_letter_share: float = 0.6, max_chars: int = 20_000,
    val_fraction: float = 0.01, stats: GatherStats | None = None, workers: int = 1,
) -> Iterator[tuple[str, str]]:
    """(split, document) for every clean, first-seen document of the files under ``inputs``, in file order.

    ``workers`` > 1 reads and cleans files in that many processes (the result is the same).
    """
    if not 0 <= val_fraction < 1:
        raise BadValue(f"val_fraction must be in [0, 1), got {val_fraction}.")
    stats = stats if stats is not None else GatherStats()
    files = find_files(inputs)
    if not files:
        raise MissingFile(f"no {'/'.join(SUFFIXES)} files (optionally .gz/.bz2/.xz) under {list(map(str, inputs))}.")
    seen: set[bytes] = set()
    work = functools.partial(_clean_file, max_chars=max_chars, min_chars=min_chars, min_letter_share=min_letter_share)
    # fork where there is one: the workers only read and clean text, and a spawned worker would re-import
    # the whole package (torch, transformers) first
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = multiprocessing.get_context(method).Pool(workers) if workers > 1 else None
    try:
        per_file = pool.imap(work, files, chunksize=4) if pool is not None else map(work, files)
        for raw_count, texts in per_file:  # in file order, whatever the number of workers
            stats.files += 1
            stats.raw_documents += raw_count
            stats.rejected += raw_count - len(texts)
            for text in texts:
                split = _split_of_new(text, seen, val_fraction, stats)
                if split is not None:
                    yield split, text
    finally:
        if pool is not None:
            pool.terminate()


def _clean_file(path: Path, *, max_chars: int, min_chars: int, min_letter_share: float) -> tuple[int, list[str]]:
    """(documents read, the clean ones) of one file."""
    raw = list(read_file(path, max_chars=max_chars))
    texts = [clean(r, min_chars=min_chars, min_letter_share=min_letter_share) for r in raw]
    return len(raw), [t for t in texts if t is not None]


def _split_of_new(text: str, seen: set[bytes], val_fraction: float, stats: GatherStats) -> str | None:
    """The split of ``text``, or None when it duplicates a document already kept (``seen`` is updated)."""
    key = fingerprint(text)
    digest = bytes.fromhex(key)[:12]
    if digest in seen:
        stats.duplicates += 1
        return None
    seen.add(digest)
    split = "validation" if is_validation(key, val_fraction) else "train"
    stats.kept[split] += 1
    stats.chars[split] += len(text)
    return split
