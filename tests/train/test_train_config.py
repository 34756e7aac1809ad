"""Job config: precedence toml < command line, booleans, help text, and one-line errors."""

from __future__ import annotations

import dataclasses

import pytest

from softpick.train.config import ConfigError, JobConfig, build_parser, from_dict, parse_args
from softpick.train.parallel import ParallelDims
from softpick.train.trainer import main


def test_toml_then_cli_precedence(tmp_path):
    toml = tmp_path / "job.toml"
    toml.write_text('[training]\nseq_len = 128\nbatch_size = 3\ncompile = true\n[optimizer]\nlr = 1e-3\n')
    cfg = parse_args(["--job.config_file", str(toml), "--training.batch_size", "5"])
    assert cfg.training.seq_len == 128  # from toml
    assert cfg.training.batch_size == 5  # command line wins
    assert cfg.optimizer.lr == 1e-3
    assert cfg.training.compile is True
    assert cfg.training.steps == JobConfig().training.steps  # default


def test_booleans_like_torchtitan_and_explicit_false(tmp_path):
    toml = tmp_path / "job.toml"
    toml.write_text("[training]\ncompile = true\n")
    assert parse_args(["--training.compile"]).training.compile is True
    assert parse_args(["--job.config_file", str(toml), "--training.compile", "false"]).training.compile is False
    assert parse_args(["--training.compile", "--training.seq_len", "64"]).training.seq_len == 64


def test_lists_and_aliases():
    cfg = parse_args(["--checkpoint.exclude_from_loading", "dataloader.rank_0, rng.rank_0",
                      "--optimizer.min_lr_ratio", "0.1", "--training.warmup_steps", "7"])
    assert cfg.checkpoint.exclude_from_loading == ["dataloader.rank_0", "rng.rank_0"]
    assert cfg.lr_scheduler.lr_min == 0.1 and cfg.lr_scheduler.warmup_steps == 7


def test_help_lists_every_option():
    from softpick.train.config import FLAME_ONLY

    text = build_parser().format_help()
    for section in dataclasses.fields(JobConfig):
        if section.name == "flame_only":
            continue
        for field in dataclasses.fields(getattr(JobConfig(), section.name)):
            assert f"--{section.name}.{field.name}" in text
    for key in FLAME_ONLY:
        assert f"--{key}" in text


def test_flame_only_flags_are_kept_aside_and_mostly_default_only():
    """Flame's unimplemented flags: accepted from toml and the command line, kept in flame_only
    (nothing else changes), and those without any_value refused unless at their default."""
    import typing

    from softpick.train.config import FLAME_ONLY

    config = parse_args(["--metrics.disable_color_printing", "--experimental.pipeline_parallel_degree", "1",
                         "--experimental.pipeline_parallel_schedule", "GPipe"])
    assert config.flame_only == {"metrics.disable_color_printing": True, "experimental.pipeline_parallel_degree": 1,
                                 "experimental.pipeline_parallel_schedule": "GPipe"}
    assert dataclasses.replace(config, flame_only={}) == JobConfig()
    for key, flag in FLAME_ONLY.items():
        if not flag.any_value:
            base = next(a for a in (*typing.get_args(flag.kind), flag.kind) if a is not type(None))
            other = {bool: True, int: 2, str: "x"}.get(base, ["a"])  # a value other than the default
            with pytest.raises(ConfigError, match=f"{key}=.* is not supported"):
                from_dict({key.split(".")[0]: {key.split(".")[1]: other}})


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--training.sequence_len", "3"], "--training.sequence_len"),
        (["--training.seq_len", "many"], "training.seq_len"),
        (["--training.dataset", "a,b", "--training.data_probs", "0.5,0.4"], "training.data_probs"),
        (["--training.dataset", "a,b", "--training.data_probs", "1.0"], "training.data_probs"),
        (["--training.dataset", "a,b", "--training.data_probs", "0.5,0.5", "--training.data_files", "x"],
         "training.data_files"),
        (["--training.varlen", "--training.batch_size", "2"], "training.batch_size"),
        (["--experimental.pipeline_parallel_degree", "2"], "experimental.pipeline_parallel_degree"),
        (["--experimental.context_parallel_degree", "2"], "experimental.context_parallel_degree"),
        (["--lr_scheduler.decay_type", "exp"], "lr_scheduler.decay_type"),
        (["--training.steps", "0"], "training.steps"),
        (["--training.skip_nan_inf_limit", "-1"], "training.skip_nan_inf_limit"),
    ],
)
def test_bad_values_fail_with_one_line(argv, names):
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")) as info:
        parse_args(argv)
    assert "\n" not in str(info.value)


def test_unknown_toml_key(tmp_path):
    toml = tmp_path / "job.toml"
    toml.write_text("[training]\nseq_length = 3\n")
    with pytest.raises(ConfigError, match=r"training\.seq_length"):
        parse_args(["--job.config_file", str(toml)])


def test_main_prints_one_line_and_returns_2(capsys):
    assert main(["--training.varlen", "--training.batch_size", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training.batch_size" in err[0]


@pytest.mark.parametrize("dims, world, ok", [
    ((1, -1, 1), 8, (1, 8, 1)), ((2, -1, 2), 8, (2, 2, 2)), ((2, 1, 1), 2, (2, 1, 1)),
    ((3, -1, 1), 8, None), ((1, 3, 1), 8, None), ((1, -1, 3), 8, None),
])
def test_parallel_degrees(dims, world, ok):
    if ok is None:
        with pytest.raises(ConfigError, match=f"WORLD_SIZE={world}"):
            ParallelDims(*dims, world)
    else:
        d = ParallelDims(*dims, world)
        assert (d.dp_replicate, d.dp_shard, d.tp) == ok
        assert d.dp_degree * d.tp == world


HELP_FLAGS = ("--training.data_parallel_shard_degree", "--checkpoint.load_step")


def test_help_lists_every_section(capsys):
    """``softpick train -h`` through the config parser alone (no model, no subprocess)."""
    with pytest.raises(SystemExit) as exit_:
        parse_args(["-h"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert all(flag in printed for flag in HELP_FLAGS), printed[-2000:]


@pytest.mark.slow
def test_launchers_print_help():
    """train.sh and ``python -m softpick.cli train`` in their own processes, as a user runs them."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for cmd in (["bash", str(root / "train.sh"), "-h"], [sys.executable, "-m", "softpick.cli", "train", "-h"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=root, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        assert all(flag in out.stdout for flag in HELP_FLAGS), out.stdout[-2000:]


def test_shipped_job_files_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    fla = parse_args(["--job.config_file", str(root / "configs" / "fla.toml")])
    assert (fla.optimizer.lr, fla.optimizer.eps, fla.lr_scheduler.decay_type, fla.lr_scheduler.lr_min) == (
        3e-4, 1e-15, "cosine", 0.1)
    tiny = parse_args(["--job.config_file", str(root / "configs" / "tiny_cpu.toml")])
    assert (root / tiny.model.config).is_file()


def test_the_tiny_job_file_runs_from_any_folder(tmp_path, monkeypatch):
    """A new user's `softpick train --job.config_file <repo>/configs/tiny_cpu.toml` from another folder
    finds the model config (it is named beside the toml)."""
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    toml = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.toml"
    assert Path(parse_args(["--job.config_file", str(toml)]).model.config).is_file()


def test_from_dict_is_the_command_line_typed():
    """The typed entry (demo, experiment) gives what its flags give, with the same checks."""
    from softpick.train.config import to_argv

    sections = {"job": {"dump_folder": "out"}, "optimizer": {"lr": 3e-3},
                "training": {"steps": 20, "compile": True, "seed": None, "data_probs": None},
                "model": {"converters": ["float8"]}, "checkpoint": {"exclude_from_loading": "rng,optimizer"}}
    config = from_dict(sections)
    assert config == parse_args(to_argv(sections))
    assert (config.optimizer.lr, config.training.steps, config.training.compile, config.training.seed) == (
        3e-3, 20, True, None)
    assert config.model.converters == ["float8"] and config.checkpoint.exclude_from_loading == ["rng", "optimizer"]
    with pytest.raises(ConfigError, match="unknown key 'training.stpes' in my tables"):
        from_dict({"training": {"stpes": 3}}, "my tables")
    with pytest.raises(ConfigError, match="bad value for training.steps"):
        from_dict({"training": {"steps": "many"}})
    with pytest.raises(ConfigError, match="training.steps must be >= 1"):
        from_dict({"training": {"steps": 0}})


def test_relative_paths_in_a_toml_are_read_beside_it(tmp_path, monkeypatch):
    """A job folder (toml, model json, tokenizer, data) runs from any current folder; values not found
    beside the toml stay as written (cwd paths like fla.toml's configs/..., hub names, builders)."""
    job = tmp_path / "job"
    (job / "data").mkdir(parents=True)
    (job / "model.json").write_text("{}")
    (job / "tok").mkdir()
    (job / "data" / "a.jsonl").write_text("")
    (job / "job.toml").write_text(
        '[model]\nconfig = "model.json"\ntokenizer_path = "tok"\n'
        '[training]\ndataset = "json,fla-hub/corpus"\ndata_files = "data/*.jsonl,elsewhere/b.jsonl"\n'
        'data_probs = "0.5,0.5"\n'
        '[job]\ndump_folder = "exp"\n')
    monkeypatch.chdir(tmp_path)  # not the toml's folder
    cfg = parse_args(["--job.config_file", "job/job.toml"])
    assert cfg.model.config == "job/model.json"
    assert cfg.model.tokenizer_path == "job/tok"
    assert cfg.training.dataset == "json,fla-hub/corpus"
    assert cfg.training.data_files == "job/data/*.jsonl,elsewhere/b.jsonl"
    assert cfg.job.dump_folder == "exp"  # outputs stay relative to the current folder, as in flame
    # the command line is taken as written, and "none" stays none
    cfg = parse_args(["--job.config_file", "job/job.toml", "--model.config", "model.json",
                      "--model.tokenizer_path", "none"])
    assert cfg.model.config == "model.json" and cfg.model.tokenizer_path is None
    # fla.toml's repository-relative config path still works from the repository root
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "m.json").write_text("{}")
    (job / "fla.toml").write_text('[model]\nconfig = "configs/m.json"\n')
    assert parse_args(["--job.config_file", "job/fla.toml"]).model.config == "configs/m.json"


def test_help_says_how_to_run_a_hub_toml_offline(capsys):
    text = build_parser().format_help()
    flat = " ".join(text.split())
    assert "--model.tokenizer_path none --training.dataset none" in flat
    assert "beside the toml" in flat
