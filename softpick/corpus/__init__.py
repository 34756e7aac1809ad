"""Embedded offline data: a procedurally generated English corpus and a BPE tokenizer trained on it.

Nothing is downloaded. ``embedded_documents`` generates the documents (about 3 MB, well under a
second), ``write_embedded_dataset`` writes them as JSON lines for ``datasets``, and
``embedded_tokenizer`` trains a byte-level BPE tokenizer on them once and caches it.
"""

from __future__ import annotations

from softpick.corpus.dataset import CORPUS_VERSION, embedded_documents, write_embedded_dataset
from softpick.corpus.tokenizer import cache_root, embedded_tokenizer, train_tokenizer

__all__ = [
    "CORPUS_VERSION",
    "cache_root",
    "embedded_documents",
    "embedded_tokenizer",
    "train_tokenizer",
    "write_embedded_dataset",
]
