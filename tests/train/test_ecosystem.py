"""flame values, hub names offline, the end-of-run export and dashboard tags (issue: fit the ecosystem)."""

from __future__ import annotations

import json
import time

import pytest

from softpick.errors import UserError
from softpick.hub import looks_like_repo_id
from softpick.models.loading import load_model_and_tokenizer, load_model_config
from softpick.train import checkpoint
from softpick.train.checkpoint import CheckpointManager
from softpick.train.config import Checkpoint, ConfigError, parse_args
from softpick.train.trainer import main

from train_utils import SEQ_LEN, train_args


def test_plain_run_exports_hf_warns_about_warmup_and_uses_torchtitan_tags(assets, tmp_path, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dump = tmp_path / "run"
    caplog.set_level("WARNING", logger="softpick.train")
    assert main(train_args(assets, dump, "--checkpoint.enable_checkpoint", "false", "--metrics.enable_tensorboard",
                           "--lr_scheduler.warmup_steps", "5", steps=3)) == 0
    exported = json.loads((dump / "hf" / "config.json").read_text())
    assert exported["model_type"] == "softpick_transformer"
    assert exported["trained_context_len"] == SEQ_LEN  # what softpick analyze evaluates at by default
    assert not (dump / "checkpoint").exists()
    assert any("warmup_steps (5) does not fit in training.steps (3)" in r.getMessage() for r in caplog.records)
    events = EventAccumulator(str(next((dump / "tb").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss_metrics/global_avg_loss", "grad_norm", "lr", "throughput(tps)", "tflops"} <= tags
    assert "loss" not in tags


def test_checkpoint_interval_in_seconds(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(checkpoint.time, "monotonic", lambda: clock[0])
    cfg = Checkpoint(enable_checkpoint=True, interval_type="seconds", interval=60)
    manager = CheckpointManager(cfg, tmp_path, model=None, optimizer=None, scheduler=None, loader=None, train_state={})
    saved = []
    monkeypatch.setattr(manager, "_full_state", lambda: {})
    monkeypatch.setattr(manager, "save", lambda step, state, use_async=False: saved.append(step) or tmp_path)
    for step in range(1, 6):
        clock[0] += 25.0  # 25 s per step: due after 60 s, i.e. at steps 3 and 6
        manager.maybe_save(step, last=step == 5)
    assert saved == [3, 5]  # step 5 is the last one


def test_flame_interval_type_spellings_and_delayed_float8():
    assert parse_args(["--checkpoint.interval_type", "step"]).checkpoint.interval_type == "steps"
    assert parse_args(["--checkpoint.interval_type", "seconds"]).checkpoint.interval_type == "seconds"
    with pytest.raises(ConfigError, match=r"float8.scaling_type_weight='delayed' is not supported"):
        parse_args(["--float8.scaling_type_weight", "delayed"])


def test_hub_names_fail_in_seconds_when_offline(assets, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"model.config 'org/name' .* HF_HUB_OFFLINE is set"):
        load_model_config("org/name")
    with pytest.raises(UserError, match=r"MODEL_DIR 'org/name' .* HF_HUB_OFFLINE"):
        load_model_and_tokenizer("org/name", None, "cpu", None)
    args = train_args(assets, tmp_path / "run", "--checkpoint.enable_checkpoint", "false")
    args[args.index("--training.dataset") + 1] = "HuggingFaceFW/fineweb-edu"
    args.remove("--training.data_files")
    args.remove(str(assets["docs"]))
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training.dataset 'HuggingFaceFW/fineweb-edu'" in err[0]
    assert main([*args, "--model.tokenizer_path", "fla-hub/transformer-1.3B-100B"]) == 2
    assert "model.tokenizer_path 'fla-hub/transformer-1.3B-100B'" in capsys.readouterr().err
    assert time.perf_counter() - start < 10

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    with pytest.raises(UserError, match=r"127.0.0.1:9 cannot be reached"):
        load_model_config("org/name")


def test_repo_ids_and_paths_are_told_apart(tmp_path):
    assert looks_like_repo_id("fla-hub/transformer-1.3B-100B") and looks_like_repo_id("gpt2")
    assert not looks_like_repo_id("configs/missing.json") and not looks_like_repo_id("./x")
    assert not looks_like_repo_id(str(tmp_path)) and not looks_like_repo_id("a/b/c")


def test_hub_errors_when_online_are_one_line(monkeypatch):
    """Online (the check passes) but the repository is missing: transformers' error becomes one line."""
    import softpick.models.loading as loading
    from transformers import PreTrainedConfig

    monkeypatch.setattr(loading, "require_hub", lambda flag, name: None)

    def missing(name, **kwargs):
        raise OSError(f"{name} is not a local folder and is not a valid model identifier\nlisted on the hub ...")

    monkeypatch.setattr(PreTrainedConfig, "get_config_dict", staticmethod(missing))
    with pytest.raises(UserError) as info:
        load_model_config("org/missing")
    assert str(info.value).startswith("model.config 'org/missing': cannot load it from the hub: org/missing is not")
    assert "\n" not in str(info.value)
