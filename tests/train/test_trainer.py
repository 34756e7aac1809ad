"""End-to-end single-process CPU runs: loss falls, exact resume, checkpoint options, conversion."""

from __future__ import annotations

import shutil

import pytest
import torch
from train_utils import read_metrics, train_args

from softpick.train import convert
from softpick.train.checkpoint import step_dirs
from softpick.train.config import parse_args
from softpick.train.data import build_loader
from softpick.train.trainer import main


def losses(dump):
    return [row["loss"] for row in read_metrics(dump)]


@pytest.mark.slow
def test_loss_falls_and_metrics_are_written(assets, tmp_path):
    dump = tmp_path / "run"
    assert main(train_args(assets, dump, "--metrics.enable_tensorboard", steps=30)) == 0
    rows = read_metrics(dump)
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.4, (rows[0]["loss"], rows[-1]["loss"])
    for key in ("grad_norm", "tps", "memory_gib", "tokens"):
        assert rows[-1][key] > 0
    assert rows[0]["lr"] == pytest.approx(3e-3 / 3) and rows[-1]["lr"] == 0.0  # warmup 2, cosine to 0
    assert rows[-1]["mfu"] is None  # no peak FLOP/s known on CPU
    assert rows[-1]["tokens"] == 30 * 4 * 32
    assert any((dump / "tb").rglob("events.out.tfevents.*"))


def test_log_lines_without_a_progress_bar(assets, tmp_path, caplog):
    caplog.set_level("INFO", logger="softpick.train")
    assert main(train_args(assets, tmp_path / "run", "--metrics.progress_bar", "false",
                           "--metrics.log_freq", "2", steps=4)) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("model softpick_transformer (softpick attention):") for m in messages)
    assert any("1 process(es) on cpu" in m and "compile off" in m for m in messages)
    assert any(m.startswith("global batch 4 x 32 tokens") for m in messages)
    steps = [m for m in messages if m.startswith("step ")]
    assert [m.split(":")[0] for m in steps] == ["step 2", "step 4"] and "loss " in steps[0]


@pytest.mark.slow
def test_compile_applies_and_matches_eager(assets, tmp_path, caplog):
    caplog.set_level("INFO", logger="softpick.train")
    assert main(train_args(assets, tmp_path / "eager", steps=3)) == 0
    assert main(train_args(assets, tmp_path / "compiled", "--training.compile", steps=3)) == 0
    built = [r.getMessage() for r in caplog.records if r.getMessage().startswith("torch.compile built")]
    assert len(built) == 1 and int(built[0].split()[2]) >= 1, built
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), rel=1e-4)


def test_resume_from_a_checkpoint_is_bitwise_identical(assets, tmp_path, capsys):
    full = tmp_path / "full"
    args = ("--checkpoint.enable_checkpoint", "--checkpoint.interval", "3")
    assert main(train_args(assets, full, *args, steps=7)) == 0
    assert sorted(step_dirs(full / "checkpoint")) == [3, 6, 7]
    # a run that stopped after saving step 3: its folder holds only that checkpoint
    cut = tmp_path / "cut"
    shutil.copytree(full / "checkpoint" / "step-3", cut / "checkpoint" / "step-3")
    # a save that crashed half-way leaves a .tmp folder: never loaded
    shutil.copytree(full / "checkpoint" / "step-6", cut / "checkpoint" / "step-6.tmp")
    # a newer step folder without DCP metadata is not skipped silently: the run names the good step
    (cut / "checkpoint" / "step-5").mkdir()
    capsys.readouterr()
    assert main(train_args(assets, cut, *args, steps=7)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("softpick train:")]
    assert len(err) == 1 and "step-5 is damaged (no .metadata" in err[0] and "--checkpoint.load_step 3" in err[0]
    assert main(train_args(assets, cut, *args, "--checkpoint.load_step", "3", steps=7)) == 0
    resumed = read_metrics(cut)
    assert [r["step"] for r in resumed] == [4, 5, 6, 7]
    assert [r["loss"] for r in resumed] == losses(full)[3:]  # bitwise: exact float equality
    assert [r["grad_norm"] for r in resumed] == [r["grad_norm"] for r in read_metrics(full)[3:]]
    # --checkpoint.load_step picks an older checkpoint than the latest (metrics.jsonl keeps each step once)
    straight = losses(full)
    assert main(train_args(assets, full, *args, "--checkpoint.load_step", "3", steps=7)) == 0
    again = read_metrics(full)
    assert [r["step"] for r in again] == [1, 2, 3, 4, 5, 6, 7] and [r["loss"] for r in again] == straight
    # without the loader's position the resumed run reads other data: losses differ
    assert main(train_args(assets, full, *args, "--checkpoint.load_step", "3",
                           "--checkpoint.exclude_from_loading", "dataloader", steps=7)) == 0
    assert [r["loss"] for r in read_metrics(full)[3:]] != straight[3:7]


def test_keep_latest_k_async_and_weights_only(assets, tmp_path):
    dump = tmp_path / "run"
    args = ("--checkpoint.enable_checkpoint", "--checkpoint.interval", "1", "--checkpoint.keep_latest_k", "2",
            "--checkpoint.async_mode", "async", "--checkpoint.model_weights_only",
            "--checkpoint.export_dtype", "bfloat16")
    assert main(train_args(assets, dump, *args, steps=4)) == 0
    done = step_dirs(dump / "checkpoint")
    assert sorted(done) == [3, 4]
    assert not list((dump / "checkpoint").glob("*.tmp"))
    import torch.distributed.checkpoint as dcp

    meta = dcp.FileSystemReader(str(done[4])).read_metadata().state_dict_metadata
    assert all(k.startswith("model.") for k in meta)  # weights only at the end
    assert {m.properties.dtype for m in meta.values()} == {torch.bfloat16}
    assert any(k.startswith("optimizer.") for k in dcp.FileSystemReader(str(done[3])).read_metadata().state_dict_metadata)


def test_conversion_round_trip_gives_equal_logits(assets, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dump = tmp_path / "run"
    assert main(train_args(assets, dump, "--checkpoint.enable_checkpoint", "--checkpoint.interval", "4",
                           steps=4)) == 0
    out = convert.dcp_to_hf(dump, step=4)
    x = torch.randint(4, 64, (2, 16))
    final = AutoModelForCausalLM.from_pretrained(str(dump / "hf"))
    converted = AutoModelForCausalLM.from_pretrained(str(out))
    assert torch.equal(final(x).logits, converted(x).logits)
    # hf -> dcp step-0, then a new run starts from those weights: its first loss is the model's loss
    cont = tmp_path / "continue"
    assert convert.main(["hf-to-dcp", "--model", str(out), "--checkpoint", str(cont / "checkpoint" / "step-0")]) == 0
    assert main(train_args(assets, cont, "--checkpoint.enable_checkpoint", steps=1)) == 0
    cfg = parse_args(train_args(assets, cont, steps=1))
    batch = next(iter(build_loader(cfg.training, AutoTokenizer.from_pretrained(str(assets["tokenizer"])),
                                   rank=0, world=1, seed=7)))
    with torch.no_grad():
        expected = converted(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss.item()
    assert losses(cont)[0] == pytest.approx(expected, rel=1e-5)  # started from the converted weights
    reloaded = convert.dcp_to_hf(cont, step=0, config=str(dump / "hf"), out=tmp_path / "step0")
    assert torch.equal(AutoModelForCausalLM.from_pretrained(str(reloaded))(x).logits, converted(x).logits)


def test_varlen_and_accumulation(assets, tmp_path):
    dump = tmp_path / "run"
    assert main(train_args(assets, dump, "--training.varlen", "--training.batch_size", "1", "--training.seq_len",
                           "96", "--training.context_len", "16", "--training.gradient_accumulation_steps", "2",
                           "--activation_checkpoint.mode", "full", steps=3)) == 0
    rows = read_metrics(dump)
    assert len(rows) == 3 and rows[-1]["tokens"] == 3 * 2 * 96


def test_varlen_needs_a_softpick_model(assets, tmp_path, capsys):
    args = train_args(assets, tmp_path, "--training.varlen", "--training.batch_size", "1")
    args[args.index("--model.config") + 1] = str(assets["llama"])
    assert main(args) == 2
    assert "cu_seqlens" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["selective", "op"])
def test_selective_activation_checkpointing_matches_plain(assets, tmp_path, mode):
    plain, ac = tmp_path / "plain", tmp_path / "ac"
    assert main(train_args(assets, plain, steps=2)) == 0
    option = "op" if mode == "op" else "1"
    assert main(train_args(assets, ac, "--activation_checkpoint.mode", "selective",
                           "--activation_checkpoint.selective_ac_option", option, steps=2)) == 0
    assert losses(ac) == pytest.approx(losses(plain), rel=1e-6)


def test_skip_nan_inf_skips_and_counts(assets, tmp_path, monkeypatch):
    import softpick.train.trainer as trainer_mod

    real, calls = trainer_mod.clip_grad_norm_, []

    def nan_on_second_step(params, max_norm):
        calls.append(1)
        norm = real(params, max_norm)
        return torch.full_like(norm, float("nan")) if len(calls) == 2 else norm

    monkeypatch.setattr(trainer_mod, "clip_grad_norm_", nan_on_second_step)
    dump = tmp_path / "run"
    assert main(train_args(assets, dump, "--training.skip_nan_inf", "--checkpoint.enable_checkpoint", steps=3)) == 0
    assert [r["skipped"] for r in read_metrics(dump)] == [0, 1, 1]
    assert all(torch.isfinite(p).all() for p in _final_weights(dump).values())


def _final_weights(dump):
    from safetensors.torch import load_file

    return load_file(str(dump / "hf" / "model.safetensors"))


def test_profiler_trace(assets, tmp_path):
    dump = tmp_path / "run"
    assert main(train_args(assets, dump, "--profiling.enable_profiling", "--profiling.profile_freq", "2",
                           steps=2)) == 0
    assert (dump / "profile_traces" / "iteration_2" / "rank_0_trace.json").is_file()


def test_wandb_offline(assets, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    dump = tmp_path / "run"
    assert main(train_args(assets, dump, "--metrics.enable_wandb", steps=2)) == 0
    assert list((dump / "wandb").glob("offline-run-*"))


def test_fused_loss_matches_the_plain_loss(assets, tmp_path):
    """The chunked linear cross-entropy (default) and the plain LM head + F.cross_entropy train alike."""
    assert main(train_args(assets, tmp_path / "plain", "--training.fused_loss", "false", steps=3)) == 0
    assert main(train_args(assets, tmp_path / "fused", steps=3)) == 0
    assert losses(tmp_path / "fused") == pytest.approx(losses(tmp_path / "plain"), rel=1e-5)


def test_compiled_varlen_steps_build_no_new_graphs(assets, tmp_path, monkeypatch):
    """Packed rows with a changing document count run on the graphs of the first step (no recompiles):
    the count is marked dynamic, the longest piece is bucketed and positions come from the loader.
    (Dynamo's eager backend: the guards and graphs are dynamo's whatever the backend, and it builds in seconds.)"""
    from torch._dynamo.utils import counters

    from softpick.train import parallel
    from softpick.train.trainer import Trainer

    compile_ = torch.compile
    monkeypatch.setattr(parallel.torch, "compile", lambda module: compile_(module, backend="eager"))
    torch._dynamo.reset()
    args = train_args(assets, tmp_path / "run", "--training.varlen", "--training.batch_size", "1",
                      "--training.seq_len", "44", "--training.context_len", "16", "--training.compile", steps=5)
    trainer = Trainer(parse_args(args))
    try:
        data = iter(trainer.loader)
        trainer.train_step([next(data)])
        built, counts = counters["stats"]["unique_graphs"], set()
        for _ in range(4):
            batch = next(data)
            counts.add(batch["cu_seqlens"].numel())
            trainer.train_step([batch])
        assert len(counts) > 1  # the document count changed between steps
        assert counters["stats"]["unique_graphs"] == built
    finally:
        trainer.close()
