"""Data pipeline: windows, varlen cu_seqlens, mixing proportions, exact resume, rank shards."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from train_utils import SEQ_LEN, make_docs
from transformers import AutoTokenizer

from softpick.train.config import parse_args
from softpick.train.data import (
    build_loader, cu_seqlens_from_lengths, load_documents, max_seqlen_bucket, shuffled_indices,
)


def config(assets, *extra):
    return parse_args(["--training.dataset", "json", "--training.data_files", str(assets["docs"]),
                       "--training.num_workers", "0", *extra]).training


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def token_stream(assets, seed):
    """All documents of epoch 0 in shuffled order as one [BOS] doc [EOS] stream."""
    tok = AutoTokenizer.from_pretrained(str(assets["tokenizer"]))
    texts = [json.loads(line)["text"] for line in assets["docs"].read_text().splitlines()]
    order = list(shuffled_indices(len(texts), seed=seed, epoch=0))
    out = []
    for i in order:
        out += [tok.bos_token_id] + tok(texts[i], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return out, tok


def test_windows_cut_the_concatenated_stream(assets):
    stream, tok = token_stream(assets, seed=3)
    cfg = config(assets, "--training.seq_len", "20", "--training.batch_size", "3")
    batches = take(build_loader(cfg, tok, rank=0, world=1, seed=3), 5)
    assert all(b["input_ids"].shape == (3, 20) for b in batches)
    flat = torch.cat([b["input_ids"].flatten() for b in batches]).tolist()
    assert flat == stream[: 5 * 60]


def test_varlen_rows_split_at_documents_and_context_len(assets):
    stream, tok = token_stream(assets, seed=3)
    cfg = config(assets, "--training.seq_len", "50", "--training.batch_size", "1", "--training.varlen",
                 "--training.context_len", "16")
    for b in take(build_loader(cfg, tok, rank=0, world=1, seed=3), 4):
        ids, cu = b["input_ids"][0], b["cu_seqlens"]
        assert ids.shape == (50,) and cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == 50
        assert int(cu.diff().max()) <= 16 and int(cu.diff().min()) >= 1
        bos = set((ids == tok.bos_token_id).nonzero().flatten().tolist())
        assert bos <= set(cu.tolist())  # every document start begins a piece
        starts = torch.zeros(50, dtype=torch.long)
        starts[cu[:-1].long()] = cu[:-1].long()
        assert torch.equal(b["position_ids"][0], torch.arange(50) - starts.cummax(0).values)  # restart per piece
        assert int(b["max_seqlen"]) == 16  # bucketed, at most context_len


def test_max_seqlen_bucket():
    assert [max_seqlen_bucket(n, 4096) for n in (1, 256, 257, 1000, 4096)] == [256, 256, 512, 1024, 4096]
    assert max_seqlen_bucket(3000, 2048) == 2048 and max_seqlen_bucket(5, 100) == 100


def test_cu_seqlens_from_lengths():
    assert cu_seqlens_from_lengths([5, 3], 4).tolist() == [0, 4, 5, 8]
    assert cu_seqlens_from_lengths([8], 4).tolist() == [0, 4, 8]


def test_mixing_proportions(assets, tmp_path):
    low = make_docs(tmp_path / "low.jsonl", 300, seed=1, words=range(0, 30))
    high = make_docs(tmp_path / "high.jsonl", 300, seed=2, words=range(30, 60))
    cfg = config(assets, "--training.dataset", "json,json", "--training.data_files", f"{low},{high}",
                 "--training.data_probs", "0.8,0.2")
    docs = load_documents(cfg, seed=11)
    first = [docs[i]["text"] for i in range(250)]
    share = np.mean([int(t.split()[2][1:]) < 30 for t in first])
    assert abs(share - 0.8) < 0.08, share  # 250 draws: sd 0.025


@pytest.mark.parametrize("workers, streaming", [(0, False), (2, False), (0, True), (2, True)])
def test_resume_continues_on_the_next_token(assets, workers, streaming):
    _, tok = token_stream(assets, seed=0)
    cfg = config(assets, "--training.seq_len", "24", "--training.batch_size", "2",
                 "--training.num_workers", str(workers), "--training.streaming", str(streaming))
    loader = build_loader(cfg, tok, rank=0, world=1, seed=5)
    it = iter(loader)
    for _ in range(5):
        next(it)
    state = loader.state_dict()
    expected = [next(it)["input_ids"] for _ in range(4)]
    resumed = build_loader(cfg, tok, rank=0, world=1, seed=5)
    resumed.load_state_dict(state)
    got = take(resumed, 4)
    assert all(torch.equal(a, b["input_ids"]) for a, b in zip(expected, got))


def test_ranks_read_disjoint_shards(assets):
    _, tok = token_stream(assets, seed=0)
    cfg = config(assets, "--training.seq_len", str(SEQ_LEN), "--training.batch_size", "1")
    rows = [[tuple(b["input_ids"][0].tolist()) for b in take(build_loader(cfg, tok, rank=r, world=2, seed=1), 200)]
            for r in range(2)]
    assert set(rows[0]).isdisjoint(rows[1])
    assert len(set(rows[0]) | set(rows[1])) == 400  # one epoch of 400 documents, none lost


def test_local_folder_and_text_files(assets, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "part.jsonl").write_text(assets["docs"].read_text())
    text = tmp_path / "docs.txt"
    text.write_text("w1 w2 w3\nw4 w5\n")
    assert len(load_documents(config(assets, "--training.dataset", str(folder)), seed=0)) == 400
    docs = load_documents(config(assets, "--training.dataset", "txt", "--training.data_files", str(text)), seed=0)
    assert docs["text"] == ["w1 w2 w3", "w4 w5"]


def test_missing_dataset_is_a_clear_error(assets, tmp_path):
    from softpick.train.config import ConfigError

    with pytest.raises(ConfigError, match="cannot load dataset"):
        load_documents(config(assets, "--training.dataset", "json", "--training.data_files",
                              str(tmp_path / "nope.jsonl")), seed=0)


@pytest.mark.parametrize("n", [1, 4095, 4096, 10_001])
def test_shuffled_indices_shard_an_epoch(n):
    full = list(shuffled_indices(n, seed=3, epoch=0))
    assert sorted(full) == list(range(n))  # every document exactly once
    if n > 100:
        assert full != sorted(full) and full != list(shuffled_indices(n, seed=3, epoch=1))
    shards = [list(shuffled_indices(n, seed=3, epoch=0, shard=k, shards=3)) for k in range(3)]
    assert [full[k::3] for k in range(3)] == shards
    assert list(shuffled_indices(n, seed=3, epoch=0, shard=1, shards=3, start=5)) == shards[1][5:]


def test_shuffled_indices_mix_a_dataset_stored_by_source():
    # three sources of 4096 documents stored one after another (e.g. three packages' docs): the first
    # 300 documents of an epoch come from all three, in about equal shares, not from one source
    n = 3 * 4096
    head = [i // 4096 for i in list(shuffled_indices(n, seed=0, epoch=0))[:300]]
    assert all(60 <= head.count(source) <= 140 for source in range(3)), [head.count(s) for s in range(3)]


def test_resume_with_another_data_parallel_world_is_refused(assets):
    _, tok = token_stream(assets, seed=0)
    cfg = config(assets, "--training.seq_len", str(SEQ_LEN), "--training.batch_size", "1")
    loader = build_loader(cfg, tok, rank=0, world=2, seed=1)
    take(loader, 3)
    state = loader.state_dict()
    assert state["world"] == 2
    with pytest.raises(ValueError, match="sharded over 2 data-parallel rank.*this run has 1.*exclude_from_loading"):
        build_loader(cfg, tok, rank=0, world=1, seed=1).load_state_dict(state)
