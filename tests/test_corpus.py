"""The embedded corpus: determinism, disjoint splits, JSON-lines files, tokenizer and its cache."""

import hashlib
import json
import os

import pytest
from transformers import AutoTokenizer

from softpick.corpus import embedded_documents, embedded_tokenizer, train_tokenizer, write_embedded_dataset
from softpick.corpus import tokenizer as tokenizer_module
from softpick.corpus.generator import generate_document

# sha256 of all train then validation documents joined by NUL. If the generator changes on purpose,
# bump CORPUS_VERSION and update this digest; if it changes by accident (another Python version,
# dict/set order, hash()), this test catches it.
CORPUS_SHA256 = "d3f1d17c2febc8833659a2b48bc4f1ae5dd8f8a5683a5358a7ddcc668852e5dc"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return embedded_tokenizer(cache_dir=tmp_path_factory.mktemp("cache"))


def test_corpus_is_fixed_across_machines():
    text = "\x00".join(embedded_documents("train") + embedded_documents("validation"))
    assert hashlib.sha256(text.encode()).hexdigest() == CORPUS_SHA256
    assert 2_000_000 < len(text) < 10_000_000


def test_documents_depend_only_on_their_seed():
    assert generate_document(123) == generate_document(123)
    assert generate_document(123) != generate_document(124)
    assert embedded_documents("train", 5) == [generate_document(seed) for seed in range(5)]


def test_splits_are_disjoint_and_sized():
    train, validation = embedded_documents("train"), embedded_documents("validation")
    assert (len(train), len(validation)) == (4000, 200)
    assert not set(train) & set(validation)
    assert embedded_documents("validation", 3) == validation[:3]


def test_genres_are_mixed():
    docs = embedded_documents("train", 200)
    assert sum("Once upon a time" in d or "there was" in d for d in docs) > 40  # stories
    assert sum(d.startswith(("Practice:", "Exercises:", "Warm up:", "Homework:")) for d in docs) > 20
    assert sum(": Hello" in d or ": Good morning" in d or ": Excuse me" in d or ": Hi " in d for d in docs) > 20


@pytest.mark.parametrize(
    "split, num, match",
    [("test", None, "split must be one of"), ("train", 0, "between 1 and 4000"), ("validation", 201, "got 201")],
)
def test_bad_arguments_raise(split, num, match):
    with pytest.raises(ValueError, match=match):
        embedded_documents(split, num)


def test_jsonl_loads_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    out = write_embedded_dataset(tmp_path / "data")
    with open(out / "validation.jsonl", encoding="utf-8") as f:
        assert json.loads(f.readline()) == {"text": embedded_documents("validation", 1)[0]}
    files = {split: str(out / f"{split}.jsonl") for split in ("train", "validation")}
    ds = datasets.load_dataset("json", data_files=files, cache_dir=str(tmp_path / "hf"))
    assert ds["train"].num_rows == 4000 and ds["validation"].num_rows == 200
    assert ds["validation"][7]["text"] == embedded_documents("validation")[7]


def test_tokenizer_round_trip_and_special_tokens(tokenizer):
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        0, 1, 2, 3,
    )
    assert 1000 < len(tokenizer) <= 8192
    for text in embedded_documents("validation", 20) + ["Zürich 😀 ünïcode, tabs\tand\nnewlines"]:
        ids = tokenizer(text).input_ids
        assert ids[0] == tokenizer.bos_token_id and tokenizer.bos_token_id not in ids[1:]
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    # The corpus is compressed well: whole words are single tokens.
    text = embedded_documents("validation", 1)[0]
    assert len(tokenizer(text).input_ids) < len(text) / 3
    assert tokenizer.convert_ids_to_tokens(tokenizer("Anna").input_ids) == ["<s>", "Anna"]


def test_tokenizer_pads_batches(tokenizer):
    batch = tokenizer(["one", "one two three"], padding=True, return_tensors="pt")
    assert batch.input_ids[0, -1].item() == tokenizer.pad_token_id
    assert batch.attention_mask.sum(dim=1).tolist() == [2, 4]


def test_train_tokenizer_saves_hf_format(tmp_path):
    texts = embedded_documents("train", 100)
    tok = train_tokenizer(texts, vocab_size=400, out_dir=tmp_path)
    assert len(tok) == 400
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert loaded(texts[0]).input_ids == tok(texts[0]).input_ids
    assert loaded.bos_token == "<s>" and loaded(texts[0]).input_ids[0] == 1
    with pytest.raises(ValueError, match="vocab_size must be at least 260"):
        train_tokenizer(texts, vocab_size=100)


def test_embedded_tokenizer_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTPICK_CACHE", str(tmp_path))
    first = embedded_tokenizer()
    (entry,) = os.listdir(tmp_path)
    assert entry.startswith("tokenizer-")

    def fail(*args, **kwargs):
        raise AssertionError("a cached tokenizer must not be trained again")

    monkeypatch.setattr(tokenizer_module, "train_tokenizer", fail)
    second = embedded_tokenizer()
    assert second.get_vocab() == first.get_vocab()
    assert os.listdir(tmp_path) == [entry]


def test_embedded_tokenizer_survives_a_race(tmp_path, monkeypatch):
    """Another process finishing first makes our rename fail; we must load its copy, leave no temp."""
    real_train = tokenizer_module.train_tokenizer

    def train_while_another_process_wins(texts, out_dir):
        tok = real_train(texts, out_dir=out_dir)
        tok.save_pretrained(str(tmp_path / f"tokenizer-{tokenizer_module._cache_key()}"))
        return tok

    monkeypatch.setattr(tokenizer_module, "train_tokenizer", train_while_another_process_wins)
    tok = embedded_tokenizer(cache_dir=tmp_path)
    assert tok("Anna").input_ids[0] == 1
    assert [p.name for p in tmp_path.iterdir()] == [f"tokenizer-{tokenizer_module._cache_key()}"]
