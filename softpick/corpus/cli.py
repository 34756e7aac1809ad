"""``softpick data``: build a pre-tokenized train/validation dataset from local text files, offline.

Usage::

    softpick data build /data/prose --out data/prose                 # trains a 32k byte-level BPE tokenizer
    softpick data build docs/ more.jsonl.gz --out data/x --tokenizer my-tokenizer --val-fraction 0.005
    softpick data info data/prose

``build`` reads every .txt/.md/.rst/.html/.htm/.jsonl/.json/.parquet file under the inputs (also
.gz/.bz2/.xz compressed), cleans and deduplicates the documents and splits them by content hash
(:mod:`softpick.corpus.local`); moves to train every validation document that shares more than
``--max-val-overlap`` of its 13-word spans with the train split (near-duplicates such as the same
licence or man page in two packages, :mod:`softpick.corpus.overlap`); writes the cleaned text to
``OUT/text/{train,validation}.jsonl`` (usable with ``--training.dataset json``) in the order of the
documents' content hashes, a deterministic shuffle: inputs stored source by source (one manual, then
a dictionary, ...) come out mixed, so a tokenizer trained on the first documents, the analysis's
first N validation documents and any reader that takes the files in order see every source; trains
a byte-level BPE tokenizer on the train split unless ``--tokenizer`` gives one; and writes
memory-mapped token files (:mod:`softpick.corpus.tokenized`).
Train on the result with ``softpick train --training.dataset OUT --model.tokenizer_path OUT/tokenizer``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from softpick.corpus.local import GatherStats, gather_documents
from softpick.corpus.overlap import SPAN_WORDS, overlaps, span_index
from softpick.corpus.tokenized import TokenizedWriter, is_tokenized_dataset, read_meta
from softpick.corpus.tokenizer import train_tokenizer
from softpick.models.loading import load_tokenizer


def _jsonl_texts(path: Path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


def write_in_hash_order(source: Path, target: Path) -> None:
    """Copy the lines of ``source`` to ``target`` sorted by a hash of each line (memory: 24 bytes a line)."""
    index = []  # (hash, offset, length)
    with open(source, "rb") as f:
        offset = 0
        for line in f:
            index.append((hashlib.blake2b(line, digest_size=8).digest(), offset, len(line)))
            offset += len(line)
    index.sort()
    with open(source, "rb") as f, open(target, "wb") as out:
        for _, offset, length in index:
            f.seek(offset)
            out.write(f.read(length))


def move_leaked_validation(unordered: dict[str, Path], max_overlap: float, workers: int) -> dict:
    """Move validation documents whose span overlap with train exceeds ``max_overlap`` into train
    (both files rewritten in place); returns what was measured and moved."""
    index = span_index(_jsonl_texts(unordered["train"]), workers)
    texts = list(_jsonl_texts(unordered["validation"]))
    shares = overlaps(texts, index, workers)
    kept = [t for t, share in zip(texts, shares) if share <= max_overlap]
    moved = [t for t, share in zip(texts, shares) if share > max_overlap]
    with open(unordered["validation"], "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in kept)
    with open(unordered["train"], "a", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in moved)
    mean = sum(shares) / len(shares) if shares else 0.0
    return {"span_words": SPAN_WORDS, "max_overlap": max_overlap, "moved_to_train": len(moved),
            "moved_chars": sum(map(len, moved)), "mean_overlap_before": round(mean, 4), "train_spans": len(index)}


def check_out(out: Path, inputs: list[str]) -> None:
    """ValueError (one line) unless ``out`` is new, empty, or an earlier ``data build`` output, and neither
    holds an input nor lies inside one (its files would be read back as inputs)."""
    for item in map(Path, inputs):
        if not item.exists():
            raise FileNotFoundError(f"input {item} does not exist.")
        a, b = out.resolve(), item.resolve()
        if a == b or a in b.parents or (item.is_dir() and b in a.parents):
            raise ValueError(f"--out {out} and the input {item} overlap: the output would be read as input or "
                             f"overwrite it; give an --out outside the inputs.")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a new folder.")
    if out.is_dir() and any(out.iterdir()) and not is_tokenized_dataset(out):
        raise ValueError(f"--out {out} exists and holds files that softpick data build did not write; give a new or "
                         f"empty folder.")


def build(args: argparse.Namespace) -> dict:
    """Run ``softpick data build``; returns the metadata written to OUT/softpick_tokens.json."""
    if not 0 <= args.max_val_overlap <= 1:
        raise ValueError(f"--max-val-overlap must be a share in [0, 1], got {args.max_val_overlap}.")
    given_tokenizer = load_tokenizer(args.tokenizer, flag="--tokenizer") if args.tokenizer else None  # fail fast
    out = Path(args.out)
    check_out(out, args.inputs)
    text_dir = out / "text"
    text_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    stats = GatherStats()
    unordered = {split: text_dir / f"{split}.unordered.jsonl" for split in ("train", "validation")}
    files = {split: open(path, "w", encoding="utf-8") for split, path in unordered.items()}
    try:
        for split, text in gather_documents(args.inputs, min_chars=args.min_chars, min_letter_share=args.min_letter_share,
                                            max_chars=args.max_chars, val_fraction=args.val_fraction, stats=stats,
                                            workers=args.workers):
            files[split].write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    finally:
        for f in files.values():
            f.close()
    leakage = None
    if args.max_val_overlap < 1:
        leakage = move_leaked_validation(unordered, args.max_val_overlap, args.workers)
        stats.kept["validation"] -= leakage["moved_to_train"]
        stats.kept["train"] += leakage["moved_to_train"]
        stats.chars["validation"] -= leakage["moved_chars"]
        stats.chars["train"] += leakage["moved_chars"]
    for split, path in unordered.items():
        write_in_hash_order(path, text_dir / f"{split}.jsonl")
        path.unlink()
    print(f"read {stats.files} files: {stats.raw_documents} documents, {stats.rejected} rejected by the cleaner, "
          f"{stats.duplicates} duplicates; kept {stats.kept['train']} train ({stats.chars['train'] / 1e6:.1f} M chars) "
          f"and {stats.kept['validation']} validation", flush=True)
    if leakage is not None:
        print(f"moved {leakage['moved_to_train']} validation documents sharing more than {args.max_val_overlap:.0%} of "
              f"their {SPAN_WORDS}-word spans with train to train (mean overlap before: "
              f"{leakage['mean_overlap_before']:.1%})", flush=True)
    if stats.kept["validation"] == 0 and args.val_fraction > 0:
        print("warning: the validation split is empty; raise --val-fraction or --max-val-overlap", file=sys.stderr)
    if stats.kept["train"] == 0:
        raise ValueError("no document survived cleaning; lower --min-chars or --min-letter-share.")

    if given_tokenizer is not None:
        tokenizer = given_tokenizer
    else:
        sample = itertools.islice(_jsonl_texts(text_dir / "train.jsonl"), args.tokenizer_docs)
        tokenizer = train_tokenizer(sample, vocab_size=args.vocab_size)
        print(f"trained a byte-level BPE tokenizer: {len(tokenizer)} tokens", flush=True)

    writer = TokenizedWriter(out, tokenizer)
    for split in ("train", "validation"):
        for text in _jsonl_texts(text_dir / f"{split}.jsonl"):
            writer.add(split, text)
    meta = writer.close({"sources": [str(p) for p in args.inputs], "cleaning": {
        "min_chars": args.min_chars, "min_letter_share": args.min_letter_share, "max_chars": args.max_chars,
        "val_fraction": args.val_fraction, "max_val_overlap": args.max_val_overlap}, "stats": asdict(stats),
        "validation_leakage": leakage})
    seconds = time.perf_counter() - start
    for split, info in meta["splits"].items():
        print(f"{split}: {info['documents']} documents, {info['tokens'] / 1e6:.2f} M tokens ({meta['dtype']})")
    print(f"wrote {out} in {seconds:.0f} s; train with --training.dataset {out} --model.tokenizer_path {out / 'tokenizer'}")
    return meta


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="softpick data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="clean, deduplicate, split and tokenize local text files")
    b.add_argument("inputs", nargs="+", help="files or folders (searched recursively)")
    b.add_argument("--out", required=True, help="output dataset folder")
    b.add_argument("--tokenizer", default=None, help="an HF tokenizer folder (default: train one on the data)")
    b.add_argument("--vocab-size", type=int, default=32000, help="vocabulary of the trained tokenizer")
    b.add_argument("--tokenizer-docs", type=int, default=200_000, help="train documents the tokenizer learns from")
    b.add_argument("--val-fraction", type=float, default=0.01, help="share of documents held out for validation")
    b.add_argument("--max-val-overlap", type=float, default=0.3,
                   help=f"validation documents sharing more than this share of their {SPAN_WORDS}-word spans with "
                        "train are moved to train (1 keeps them all)")
    b.add_argument("--min-chars", type=int, default=200, help="shorter documents are dropped")
    b.add_argument("--min-letter-share", type=float, default=0.6,
                   help="documents whose non-space characters are less than this share letters are dropped")
    b.add_argument("--max-chars", type=int, default=20_000, help="longer text files are cut at blank lines")
    b.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes that read and clean files (default: all cores; the output is the same)")
    i = sub.add_parser("info", help="print a dataset's metadata")
    i.add_argument("folder")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``softpick data``."""
    args = parser().parse_args(argv)
    try:
        if args.command == "info":
            print(json.dumps(read_meta(args.folder), indent=2))
        else:
            build(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"softpick data: {error}", file=sys.stderr)
        return 2
    return 0
