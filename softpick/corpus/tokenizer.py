"""A byte-level BPE tokenizer trained on the embedded corpus, cached on disk.

Special tokens follow Llama's ids: ``<unk>`` 0, ``<s>`` (BOS) 1, ``</s>`` (EOS) 2, ``<pad>`` 3.
Every encoded text starts with ``<s>``, so position 0 is BOS (the token whose attention the
attention-sink analysis measures).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from softpick.errors import BadValue
from softpick.corpus.dataset import CORPUS_VERSION, embedded_documents

SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
"""transformers attribute -> token; ids are assigned in this order (0, 1, 2, 3)."""

DEFAULT_VOCAB_SIZE = 8192


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, out_dir: str | Path | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (deterministic for the same texts).

    Args:
        texts: training documents.
        vocab_size: upper bound on the vocabulary, special tokens and the 256 bytes included
            (a small corpus may stop short of it: ``len(tokenizer)`` is the real size).
        out_dir: if given, the tokenizer is saved there with ``save_pretrained``.

    Returns:
        A ``PreTrainedTokenizerFast`` whose encodings start with ``<s>``, with bos/eos/pad/unk set.
    """
    minimum = len(SPECIAL_TOKENS) + 256
    if vocab_size < minimum:
        raise BadValue(f"vocab_size must be at least {minimum} (256 bytes + special tokens), got {vocab_size}.")
    backend = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, backend.token_to_id(bos))]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def cache_root() -> Path:
    """``$SOFTPICK_CACHE`` if set, else ``~/.cache/softpick``."""
    env = os.environ.get("SOFTPICK_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "softpick"


def _cache_key() -> str:
    """Changes whenever the corpus, the tokenizer recipe or the tokenizers library changes."""
    recipe = f"corpus={CORPUS_VERSION};vocab={DEFAULT_VOCAB_SIZE};bpe-bytelevel-1;tokenizers={tokenizers.__version__}"
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def embedded_tokenizer(cache_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """The tokenizer of the embedded train split, trained once (about a second) and then loaded.

    It lives in ``<cache_dir or cache_root()>/tokenizer-<key>``. Training writes to a temporary
    directory beside it and renames it into place, so two processes starting at once are safe:
    the loser of the rename drops its copy and loads the winner's.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    final = root / f"tokenizer-{_cache_key()}"
    if not final.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
        try:
            train_tokenizer(embedded_documents("train"), out_dir=tmp)
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(str(final))
