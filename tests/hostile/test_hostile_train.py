"""``softpick train`` under hostile use: no flag combination loses a checkpoint, an export or a finished
run; runs that would train nothing fail in one line; a full disk at the export keeps the weights
somewhere the line names."""

from __future__ import annotations

import errno
import json
import os
import signal
import tempfile

import pytest
import torch
from hostile_utils import refused, run, tree_hashes
from train_utils import nan_grad_norm_from_call, read_metrics

import softpick.train.trainer as trainer_mod
from softpick.train.checkpoint import pick_checkpoint, step_dirs

CKPT = ("--checkpoint.enable_checkpoint", "--checkpoint.interval", "2")


def _signal_at_call(n: int, monkeypatch, signum=signal.SIGTERM) -> None:
    real, calls = trainer_mod.clip_grad_norm_, []

    def fake(params, max_norm):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signum)  # arrives mid-step: the step still completes
        return real(params, max_norm)

    monkeypatch.setattr(trainer_mod, "clip_grad_norm_", fake)


@pytest.mark.slow
def test_load_step_keep_latest_k_and_sigterm_lose_nothing(a_run, args, capsys, monkeypatch):
    """The issue's example: resume from step 4 of an 8-step run with keep_latest_k 1, SIGTERM after step 7."""
    assert run(capsys, ["train", *args(a_run, *CKPT, steps=8)])[0] == 0
    assert sorted(step_dirs(a_run / "checkpoint")) == [2, 4, 6, 8]
    _signal_at_call(3, monkeypatch)
    line = refused(capsys, ["train", *args(a_run, *CKPT, "--checkpoint.load_step", "4", "--checkpoint.keep_latest_k",
                                          "1", steps=8)], 75, "stopped by SIGTERM after step 7", "step-7 written",
                   "without --checkpoint.load_step")
    folder = a_run / "checkpoint"
    assert sorted(step_dirs(folder)) == [4, 7], line  # never the step resumed from nor the one just written
    assert pick_checkpoint(folder) == folder / "step-7"  # whole
    aside = [p for p in folder.iterdir() if p.name.startswith("abandoned-")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == ["step-6", "step-8"]
    monkeypatch.undo()
    assert run(capsys, ["train", *args(a_run, *CKPT, "--checkpoint.keep_latest_k", "1", steps=8)])[0] == 0
    assert sorted(step_dirs(folder)) == [7, 8] and read_metrics(a_run)[-1]["step"] == 8  # 7: resumed from


def test_checkpointing_off_never_replaces_a_run(a_run, args, capsys, tmp_path):
    refused(capsys, ["train", *args(a_run, "--checkpoint.load_step", "4")], 2, "checkpoint.load_step 4 needs",
            keep=(a_run,))
    refused(capsys, ["train", *args(a_run)], 2, "holds checkpoints (steps 2, 4) but checkpointing is off",
            keep=(a_run,))
    finished_no_ckpt = tmp_path / "plain"
    (finished_no_ckpt / "hf").mkdir(parents=True)
    (finished_no_ckpt / "hf" / "config.json").write_text("{}")
    for extra in ((), CKPT):
        refused(capsys, ["train", *args(finished_no_ckpt, *extra)], 2, "holds a finished run",
                keep=(finished_no_ckpt,))


@pytest.mark.parametrize("flag,value,words", [
    ("--optimizer.lr", "inf", "optimizer.lr must be a finite number"),
    ("--optimizer.lr", "nan", "optimizer.lr must be a finite number"),
    ("--optimizer.lr", "-1", "optimizer.lr must be > 0"),
    ("--optimizer.eps", "nan", "optimizer.eps must be a finite number"),
    ("--optimizer.beta2", "1.5", "optimizer.beta2 must be in [0, 1)"),
    ("--training.max_norm", "nan", "training.max_norm must be a finite number"),
    ("--training.seq_len", "1", "training.seq_len must be >= 2"),
    ("--training.seq_len", "64", "longer than model.config max_position_embeddings"),  # the config says 128: 256
    ("--checkpoint.load_step", "-2", "checkpoint.load_step must be"),
    ("--training.seed", "-1", "training.seed must be >= 0"),
    ("--checkpoint.folder", "", "checkpoint.folder is empty"),
    ("--checkpoint.exclude_from_loading", "bogus", "unknown entry 'bogus'"),
    ("--job.dump_folder", "", "job.dump_folder is empty"),
    ("--job.dump_folder", "  ", "job.dump_folder is empty"),
])
def test_runs_that_would_train_nothing_are_refused(inputs, args, capsys, tmp_path, monkeypatch, flag, value, words):
    monkeypatch.chdir(tmp_path)
    argv = args(tmp_path / "run", "--checkpoint.enable_checkpoint")
    if value == "64":
        model = json.loads(inputs["model"].read_text())
        (tmp_path / "short.json").write_text(json.dumps({**model, "max_position_embeddings": 48}))
        argv[argv.index("--model.config") + 1] = str(tmp_path / "short.json")
    refused(capsys, ["train", *argv, flag, value], 2, words, keep=(tmp_path,))
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file()]  # at most empty folders


def test_a_misspelt_model_key_is_refused_with_the_closest_one(inputs, args, capsys, tmp_path):
    model = json.loads(inputs["model"].read_text())
    for typo, right in (("atn_type", "attn_type"), ("num_layers", "num_hidden_layers"), ("hiden_size", "hidden_size")):
        path = tmp_path / f"{typo}.json"
        path.write_text(json.dumps({**model, typo: "softmax" if typo == "atn_type" else 2}))
        argv = args(tmp_path / "run")
        argv[argv.index("--model.config") + 1] = str(path)
        refused(capsys, ["train", *argv], 2, f"unknown key {typo!r}", f"did you mean {right!r}", keep=(tmp_path,))


def test_every_step_skipped_fails_and_exports_nothing(args, capsys, tmp_path, monkeypatch):
    nan_grad_norm_from_call(1, monkeypatch)
    dump = tmp_path / "run"
    refused(capsys, ["train", *args(dump, "--training.skip_nan_inf", "--training.skip_nan_inf_limit", "0", steps=3)],
            3, "every one of the 3 steps of this run was skipped")
    assert not (dump / "hf").exists()


@pytest.mark.parametrize("case", ["empty_file", "blank_lines", "whitespace_text", "empty_text", "binary", "latin1",
                                  "malformed_line", "no_text_field", "text_not_a_string"])
def test_bad_data_files_are_one_line(args, capsys, tmp_path, case):
    data = tmp_path / "data" / "docs.jsonl"
    data.parent.mkdir()
    content = {
        "empty_file": b"", "blank_lines": b"\n\n  \n", "whitespace_text": b'{"text": "   "}\n{"text": "\\n\\t"}\n',
        "empty_text": b'{"text": ""}\n' * 5, "binary": bytes(range(256)) * 8,
        "latin1": '{"text": "caf\u00e9 cr\u00e8me"}\n'.encode("latin-1"),
        "malformed_line": b'{"text": "w1 w2 w3"}\n{"text": "w4\n', "no_text_field": b'{"body": "w1 w2"}\n',
        "text_not_a_string": b'{"text": {"a": 1}}\n',
    }[case]
    data.write_bytes(content)
    argv = args(tmp_path / "run")
    argv[argv.index("--training.data_files") + 1] = str(data)
    refused(capsys, ["train", *argv], 2, keep=(data.parent,))
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file()]


def test_a_file_named_like_a_checkpoint_is_named(a_run, args, capsys):
    (a_run / "checkpoint" / "step-6").write_text("not a checkpoint")
    refused(capsys, ["train", *args(a_run, *CKPT, steps=8)], 2, "step-6 is damaged", "is a file",
            "--checkpoint.load_step 4", keep=(a_run,))


def test_a_checkpoint_of_another_layout_is_one_line(a_run, args, capsys):
    """The data loader's position of another layout (as a 2-rank checkpoint in one process): one line."""
    refused(capsys, ["train", *args(a_run, *CKPT, "--training.num_workers", "2", steps=6)], 2,
            "the checkpoint's data loader used 1 worker(s)", keep=(a_run,))


def test_a_damaged_file_the_manifest_does_not_cover_is_one_line(a_run, args, capsys):
    step = a_run / "checkpoint" / "step-4"
    (step / "manifest.json").unlink()  # an older or foreign checkpoint: loaded unverified
    distcp = next(step.glob("*.distcp"))
    distcp.write_bytes(distcp.read_bytes()[: distcp.stat().st_size // 2])
    refused(capsys, ["train", *args(a_run, *CKPT, steps=6)], 2, "step-4 does not load", keep=(a_run,))


def test_a_weights_only_checkpoint_says_so(a_run, args, capsys, tmp_path, caplog):
    dump = tmp_path / "cont"
    assert run(capsys, ["convert", "hf-to-dcp", "--model", a_run / "hf", "--checkpoint",
                        dump / "checkpoint" / "step-0"])[0] == 0
    caplog.set_level("INFO", logger="softpick.train")
    assert run(capsys, ["train", *args(dump, *CKPT, steps=1)])[0] == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("weights-only checkpoint" in m and "start afresh" in m for m in messages), messages
    assert not any(m.startswith("resumed from step") for m in messages)


def _fake_full_disk(monkeypatch):
    import softpick.models.export as export

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "write_remote_code", full)


def _rescued(line: str):
    from transformers import AutoModelForCausalLM

    path = line.split("were saved to ")[1].split(" instead")[0]
    return AutoModelForCausalLM.from_pretrained(path)


def test_a_full_disk_at_the_export_keeps_the_weights(args, capsys, tmp_path, monkeypatch):
    """The fake writer (any user): checkpointing off -> the weights go to a rescue folder it names."""
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)
    (tmp_path / "tmp").mkdir()
    _fake_full_disk(monkeypatch)
    real = trainer_mod.export_hf
    monkeypatch.setattr(trainer_mod, "export_hf", lambda cfg, state, out, **kw: (
        real(cfg, state, out, **kw) if "rescue" not in out.name else _write_rescue(monkeypatch, real, cfg, state,
                                                                                   out, **kw)))
    dump = tmp_path / "run"
    line = refused(capsys, ["train", *args(dump, steps=2)], 4, "no space left on", "while writing the HF export",
                   "were saved to")
    assert not (dump / "hf").exists() and _rescued(line) is not None


def _write_rescue(monkeypatch, real, cfg, state, out, **kw):
    monkeypatch.undo()  # the rescue disk has room
    return real(cfg, state, out, **kw)


def test_a_full_disk_at_the_export_with_checkpoints_names_the_checkpoint(a_run, args, capsys, monkeypatch):
    _fake_full_disk(monkeypatch)
    for _ in range(2):  # and a rerun says the same, no traceback
        refused(capsys, ["train", *args(a_run, *CKPT, steps=4)], 4, "no space left on",
                f"checkpoint {a_run / 'checkpoint' / 'step-4'}", keep=(a_run,), new_ok=())


def test_a_full_tmpfs_at_the_export(args, capsys, tmp_path, monkeypatch, small_disk):
    """A real full disk (a 64 KiB tmpfs as the dump folder): the export fails, the weights are rescued."""
    disk = small_disk(64 * 1024)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)
    (tmp_path / "tmp").mkdir()
    dump = disk / "run"
    line = refused(capsys, ["train", *args(dump, steps=2)], 4, f"no space left on {disk}", "were saved to")
    model = _rescued(line)
    assert not (dump / "hf").exists() and not [p for p in dump.iterdir() if p.name.startswith(".hf")]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_2_rank_loader_position_in_one_process_is_a_user_error():
    """What a 2-rank checkpoint resumed in one process hits (the DCP path is test_a_checkpoint_of_another_layout)."""
    from softpick.errors import UserError
    from softpick.train.data import ResumableLoader, TokenWindows

    loader = ResumableLoader(TokenWindows(["w1 w2"], None, seq_len=4))
    with pytest.raises(UserError, match="sharded over 2 data-parallel rank"):
        loader.load_state_dict({"num_workers": 1, "world": 2, "positions": {}, "served": 0})


@pytest.mark.parametrize("damage", ["truncated_tokens", "no_offsets", "garbled_meta"])
def test_a_damaged_pre_tokenized_dataset_is_one_line(inputs, args, capsys, tmp_path, damage):
    from transformers import AutoTokenizer

    from softpick.corpus.tokenized import TokenizedWriter

    built = tmp_path / "built"
    writer = TokenizedWriter(built, AutoTokenizer.from_pretrained(str(inputs["tokenizer"])))
    for line in inputs["docs"].read_text().splitlines()[:20]:
        writer.add("train", json.loads(line)["text"])
    writer.close()
    tokens = built / "train" / "tokens.bin"
    if damage == "truncated_tokens":
        tokens.write_bytes(tokens.read_bytes()[:-10])
    elif damage == "no_offsets":
        (built / "train" / "offsets.npy").unlink()
    else:
        (built / "softpick_tokens.json").write_text('{"format": "softpick-tokens-1"}')
    argv = args(tmp_path / "run")
    at = argv.index("--training.dataset")
    argv[at + 1], argv[at + 3] = str(built), "none"
    refused(capsys, ["train", *argv, "--training.data_files", "none"], 2, str(built), keep=(built,))
