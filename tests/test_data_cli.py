"""``softpick data build``: local files -> cleaned, deduplicated, split, pre-tokenized; the trainer reads it."""

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from softpick.cli import main as cli_main
from softpick.corpus import cli as data_cli
from softpick.corpus.local import clean, html_to_text, split_long
from softpick.corpus.tokenized import TokenizedDocuments, read_meta
from softpick.train.trainer import main as train_main

WORDS = ("river town bridge market harvest lantern meadow winter orchard signal valley harbor quiet "
         "story morning garden letter window travel").split()


def prose(seed: int, n_words: int = 80) -> str:
    rng = np.random.default_rng(seed)
    sentences = []
    for _ in range(n_words // 8):
        words = [WORDS[i] for i in rng.integers(0, len(WORDS), 8)]
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    (root / "book.txt").write_text("\n\n".join(prose(i) for i in range(30)))  # cut into pieces
    (root / "copy.md").write_text(prose(1000))
    (root / "dup.txt").write_text(prose(1000).upper().replace(".", ".  "))  # same text up to case and spaces
    (root / "page.html").write_text(f"<html><head><style>p {{}}</style><script>var x = 1;</script></head>"
                                    f"<body><h1>Title</h1><p>{prose(2000)}</p><p>{prose(2001)}</p></body></html>")
    (root / "code.txt").write_text("x = [1, 2, 3] # {} ()\n" * 40)  # not prose: rejected
    (root / "short.txt").write_text("Too short.")
    with gzip.open(root / "records.jsonl.gz", "wt") as f:
        for i in range(40):
            f.write(json.dumps({"text": prose(3000 + i)}) + "\n")
    pq.write_table(pa.table({"content": [prose(4000 + i) for i in range(20)]}), root / "table.parquet")
    (root / "ignored.bin").write_bytes(b"\x00\x01")
    return root


@pytest.fixture(scope="module")
def dataset(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "prose"
    argv = ["build", str(sources), "--out", str(out), "--vocab-size", "400", "--val-fraction", "0.1",
            "--max-chars", "3000"]
    assert data_cli.main(argv) == 0
    return out


def test_build_cleans_deduplicates_and_splits(dataset):
    meta = read_meta(dataset)
    stats = meta["stats"]
    assert stats["files"] == 8 and stats["duplicates"] == 1 and stats["rejected"] == 2
    kept = stats["kept"]
    assert kept["validation"] >= 1 and kept["train"] > kept["validation"]
    assert meta["splits"]["train"]["documents"] == kept["train"] and meta["dtype"] == "uint16"
    texts = [json.loads(line)["text"] for line in (dataset / "text" / "train.jsonl").read_text().splitlines()]
    assert not any("var x" in t or "p {}" in t for t in texts)  # script and style dropped
    assert any(t.startswith("Title") for t in texts + [
        json.loads(line)["text"] for line in (dataset / "text" / "validation.jsonl").read_text().splitlines()])


def test_documents_are_written_in_hash_order_not_source_order(dataset, sources, tmp_path):
    """The book's pieces, the records and the table rows come out mixed, and the same inputs in another
    order (other file names) give the same files."""
    texts = [json.loads(line)["text"] for line in (dataset / "text" / "train.jsonl").read_text().splitlines()]
    records = {prose(3000 + i) for i in range(40)}
    head = texts[: len(texts) // 3]
    assert 0 < sum(t in records for t in head) < len(head)  # records neither missing from nor filling the head
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for rank, path in enumerate(sorted(sources.iterdir(), reverse=True)):  # the inputs read in reverse order
        if path.name != "dup.txt":  # (of two near-duplicates the first one read is kept: leave the choice out)
            (renamed / f"{rank:02d}-{path.name}").write_bytes(path.read_bytes())
    again = tmp_path / "again"
    assert data_cli.main(["build", str(renamed), "--out", str(again), "--vocab-size", "400", "--val-fraction", "0.1",
                          "--max-chars", "3000"]) == 0
    for split in ("train", "validation"):
        assert (again / "text" / f"{split}.jsonl").read_text() == (dataset / "text" / f"{split}.jsonl").read_text()
    assert not list((dataset / "text").glob("*.unordered.jsonl"))


def test_tokens_round_trip_to_the_cleaned_text(dataset):
    tokenizer = AutoTokenizer.from_pretrained(str(dataset / "tokenizer"))
    docs = TokenizedDocuments(dataset, "train")
    texts = [json.loads(line)["text"] for line in (dataset / "text" / "train.jsonl").read_text().splitlines()]
    assert len(docs) == len(texts)
    for ids, text in zip(docs.take([0, 5, len(docs) - 1]), [texts[0], texts[5], texts[-1]]):
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[1:-1]) == text


def test_trainer_reads_the_tokenized_dataset_and_checks_the_tokenizer(dataset, tmp_path):
    config = tmp_path / "model.json"
    config.write_text(json.dumps({"model_type": "softpick_transformer", "hidden_size": 32, "intermediate_size": 64,
                                  "num_attention_heads": 2, "num_hidden_layers": 1, "vocab_size": 512,
                                  "attn_impl": "naive"}))
    args = ["--model.config", str(config), "--training.dataset", str(dataset), "--training.seq_len", "64",
            "--training.batch_size", "2", "--training.steps", "3", "--metrics.log_freq", "1",
            "--job.dump_folder", str(tmp_path / "run")]
    assert train_main(args + ["--model.tokenizer_path", str(dataset / "tokenizer")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["tokens"] == 3 * 2 * 64
    assert train_main(args + ["--job.dump_folder", str(tmp_path / "bad")]) != 0  # embedded tokenizer: wrong vocab


def test_missing_input_and_empty_result_fail_with_one_line(tmp_path, capsys):
    assert cli_main(["data", "build", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "tiny.txt").write_text("short")
    assert cli_main(["data", "build", str(tmp_path / "tiny.txt"), "--out", str(tmp_path / "o")]) == 2
    assert "no document survived cleaning" in capsys.readouterr().err
    assert cli_main(["data", "build", str(tmp_path / "tiny.txt"), "--out", str(tmp_path / "o"), "--max-val-overlap", "30"]) == 2
    assert "--max-val-overlap must be a share in [0, 1], got 30.0" in capsys.readouterr().err
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")  # the command no longer catches ValueError itself
    assert cli_main(["data", "build", str(tmp_path / "broken.parquet"), "--out", str(tmp_path / "o2"), "--workers", "1"]) == 2
    assert "broken.parquet is not valid parquet" in capsys.readouterr().err


def test_workers_give_the_same_documents(sources):
    from softpick.corpus.local import gather_documents

    one = list(gather_documents([sources], val_fraction=0.1, max_chars=3000, workers=1))
    two = list(gather_documents([sources], val_fraction=0.1, max_chars=3000, workers=2))
    assert one == two and len(one) > 10


def test_json_documents_and_bad_json(tmp_path):
    from softpick.corpus.local import read_file

    (tmp_path / "one.json").write_text(json.dumps({"text": "a record"}, indent=2))
    (tmp_path / "many.json").write_text(json.dumps([{"content": "x"}, {"text": "y"}, {"other": 1}]))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    assert list(read_file(tmp_path / "one.json")) == ["a record"]
    assert list(read_file(tmp_path / "many.json")) == ["x", "y"]
    with pytest.raises(ValueError, match="bad.jsonl is not valid jsonl"):
        list(read_file(tmp_path / "bad.jsonl"))


def test_cleaning_helpers():
    assert clean("a" * 10, min_chars=200) is None
    assert clean("word " * 60) == ("word " * 60).strip()
    assert clean("1234 5678 " * 40) is None  # digits are not letters
    assert "alert" not in html_to_text("<p>Hi</p><script>alert(1)</script>")
    pieces = split_long("\n\n".join(["x" * 100] * 10), max_chars=250)
    assert len(pieces) == 5 and all(len(p) <= 250 for p in pieces)


def test_span_overlap_finds_edited_copies():
    from softpick.corpus.overlap import overlaps, span_index

    original = prose(7000, n_words=200)
    words = original.split()
    words[100] = "zebra"  # one word changed: the 13 spans through it are new, the rest are shared
    edited = " ".join(words)
    index = span_index([original, prose(7001)])
    near, unrelated, short = overlaps([edited, prose(7002, n_words=200), "too few words here"], index)
    assert 0.9 < near < 1.0 and unrelated < 0.05 and short == 0.0
    assert overlaps([original], index, workers=2) == [1.0]


def test_build_moves_leaked_validation_documents_to_train(tmp_path):
    """Pairs of a document and an edited copy: wherever the pair straddles the split, the validation
    copy goes to train; with --max-val-overlap 1 the split is the plain content-hash one."""
    from softpick.corpus.overlap import overlaps, span_index

    docs = []
    for i in range(20):
        words = prose(8000 + i, n_words=160).split()
        docs.append(" ".join(words))
        words[80] = "zebra"
        docs.append(" ".join(words))
    docs += [prose(9000 + i, n_words=160) for i in range(20)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))

    def build(name, *extra):
        out = tmp_path / name
        assert data_cli.main(["build", str(tmp_path / "docs.jsonl"), "--out", str(out), "--vocab-size", "300",
                              "--val-fraction", "0.3", "--workers", "1", *extra]) == 0
        return {split: [json.loads(line)["text"] for line in (out / "text" / f"{split}.jsonl").read_text().splitlines()]
                for split in ("train", "validation")}, read_meta(out)

    plain, plain_meta = build("plain", "--max-val-overlap", "1")
    clean_split, meta = build("clean")
    assert plain_meta["validation_leakage"] is None
    leaked = [share > 0.3 for share in overlaps(plain["validation"], span_index(plain["train"]))]
    assert any(leaked) and not all(leaked)
    assert meta["validation_leakage"]["moved_to_train"] == sum(leaked)
    assert max(overlaps(clean_split["validation"], span_index(clean_split["train"]))) <= 0.3
    assert sorted(clean_split["train"] + clean_split["validation"]) == sorted(plain["train"] + plain["validation"])
    assert meta["stats"]["kept"]["validation"] == len(clean_split["validation"]) == meta["splits"]["validation"]["documents"]
