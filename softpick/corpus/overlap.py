"""Near-duplicate leakage between splits, measured on word spans.

Exact deduplication (:func:`softpick.corpus.local.fingerprint`) misses what documentation corpora are
full of: the same licence, man page or changelog in many packages with a few words changed. A
validation document like that measures memorization, not language modelling. Here every document is
cut into its spans of ``SPAN_WORDS`` consecutive words (lower-cased ``\\w+`` words, as GPT-3's
contamination check); a validation document's *overlap* is the share of its spans that also occur
in some train document. Memory: 8 bytes per distinct train span (about one per word).
"""

from __future__ import annotations

import multiprocessing
import re
import zlib
from collections.abc import Iterable

import numpy as np

SPAN_WORDS = 13
_WORD = re.compile(r"\w+")
_BASE = np.uint64(1_000_003)


def span_hashes(text: str, span: int = SPAN_WORDS) -> np.ndarray:
    """uint64 hashes [n_words - span + 1] of the text's word spans (empty when it has fewer words)."""
    words = [zlib.crc32(w.encode("utf-8")) for w in _WORD.findall(text.lower())]
    n = len(words) - span + 1
    if n <= 0:
        return np.zeros(0, np.uint64)
    h = np.asarray(words, np.uint64)
    out = np.zeros(n, np.uint64)
    with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the point
        for i in range(span):
            out = out * _BASE + h[i:i + n]
    return out


def _map(texts: Iterable[str], workers: int):
    if workers <= 1:
        return map(span_hashes, texts)
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = multiprocessing.get_context(method).Pool(workers)
    return _closing(pool, pool.imap(span_hashes, texts, chunksize=64))


def _closing(pool, results):
    try:
        yield from results
    finally:
        pool.terminate()


def span_index(texts: Iterable[str], workers: int = 1) -> np.ndarray:
    """Sorted distinct uint64 span hashes of all ``texts`` (the train split)."""
    parts = [np.unique(h) for h in _map(texts, workers)]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)


def overlaps(texts: Iterable[str], index: np.ndarray, workers: int = 1) -> list[float]:
    """For each text, the share of its word spans found in ``index`` (0.0 for texts shorter than a span)."""
    out = []
    for h in _map(texts, workers):
        if len(h) == 0 or len(index) == 0:
            out.append(0.0)
            continue
        at = np.searchsorted(index, h).clip(max=len(index) - 1)
        out.append(float((index[at] == h).mean()))
    return out
