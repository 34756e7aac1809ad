"""``softpick experiment`` end to end at toy size: two variants trained alike, analysed, compared."""

import json
import shutil

import pytest

from softpick import experiment
from softpick.cli import main as cli_main

TOY = """
[experiment]
name = "toy"
variants = ["softpick", "softmax"]

[model]
model_type = "softpick_transformer"
vocab_size = 2048
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 2
num_attention_heads = 2
max_position_embeddings = 128
initializer_range = 0.02

[variants.softpick]
attn_type = "softpick"

[variants.softmax]
attn_type = "softmax"

[train.optimizer]
lr = 3e-3

[train.training]
steps = 6
batch_size = 4
seq_len = 32
seed = 1

[train.metrics]
log_freq = 1
progress_bar = false

[train.checkpoint]
interval = 3

[analyze]
num_samples = 8
seq_len = 32
batch_size = 4
device = "cpu"
quant_bits = "4"
quant_methods = "rtn"
no_progress = true
"""


@pytest.fixture
def toy_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTPICK_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "toy.toml"
    path.write_text(TOY)
    return path


@pytest.mark.slow
def test_experiment_trains_analyses_and_compares(toy_file, tmp_path):
    out = tmp_path / "out"
    assert experiment.main([str(toy_file), "--out", str(out), "--set", "train.training.steps=5",
                            "--set", "train.metrics.analysis_freq=2"]) == 0
    for name in ("softpick", "softmax"):
        config = json.loads((out / name / "model_config.json").read_text())
        assert config["attn_type"] == name and config["hidden_size"] == 32
        rows = [json.loads(line) for line in (out / name / "train" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]  # --set overrode the file's 6 steps
        assert (out / name / "train" / "hf" / "config.json").is_file()
        assert json.loads((out / name / "analysis" / "report.json").read_text())["perplexity"]["tokens"] > 0
    # the same seed and data: step 1 sees the same batch, so the initial losses are close
    losses = [json.loads((out / n / "train" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
              for n in ("softpick", "softmax")]
    assert abs(losses[0] - losses[1]) < 0.05
    summary = (out / "README.md").read_text()
    assert "| softpick |" in summary and "| softmax |" in summary
    assert "The paper's claims at this scale" in summary and "No attention sinks" in summary
    assert (out / "learning_curves.png").stat().st_size > 0
    assert (out / "comparison" / "comparison.md").is_file()
    # the live metrics of --metrics.analysis_freq: plotted for every variant, here and in the comparison
    assert "analysis/sink_rate" in rows[1] and "analysis/sink_rate" not in rows[0]
    for folder in (out, out / "comparison"):
        assert (folder / "live_metrics.png").stat().st_size > 0 and (folder / "live_metrics_layers.png").is_file()
    assert "live_metrics.png" in summary and "live_metrics.png" in (out / "comparison" / "comparison.md").read_text()

    # --reuse keeps the trained variants (and their timings) and rewrites the summary
    first = json.loads((out / "results.json").read_text())
    mtime = (out / "softpick" / "train" / "metrics.jsonl").stat().st_mtime_ns
    assert experiment.main([str(toy_file), "--out", str(out), "--reuse"]) == 0
    assert (out / "softpick" / "train" / "metrics.jsonl").stat().st_mtime_ns == mtime  # not retrained
    assert json.loads((out / "results.json").read_text()) == first

    # a variant trained and exported but not analysed (cut off in its analysis) is analysed, not retrained
    (out / "softpick" / "analysis" / "report.json").unlink()
    assert experiment.main([str(toy_file), "--out", str(out), "--reuse"]) == 0
    assert (out / "softpick" / "train" / "metrics.jsonl").stat().st_mtime_ns == mtime
    assert (out / "softpick" / "analysis" / "report.json").is_file()
    again = json.loads((out / "results.json").read_text())
    assert again["softpick"]["train_s"] == first["softpick"]["train_s"]

    # a variant whose run was cut off after its step-3 checkpoint resumes there and logs the same losses
    train = out / "softmax" / "train"
    losses = [json.loads(line)["loss"] for line in (train / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(train / "hf")
    shutil.rmtree(train / "checkpoint" / "step-5")
    (out / "softmax" / "analysis" / "report.json").unlink()
    assert experiment.main([str(toy_file), "--out", str(out), "--reuse", "--set", "train.training.steps=5"]) == 0
    rows = [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]  # the resume replaced steps 4 and 5, each logged once
    assert [r["loss"] for r in rows] == losses  # and repeated them exactly
    assert [r["loss"] for r in experiment.read_metrics(train)] == losses
    assert (out / "softmax" / "analysis" / "report.json").is_file()


@pytest.mark.slow
def test_parallel_variants_match_sequential_ones(toy_file, tmp_path):
    """--parallel 2: each variant in its own process at the same time, then one comparison; the same
    losses as the variants trained one after another in this process."""
    seq, par = tmp_path / "seq", tmp_path / "par"
    assert experiment.main([str(toy_file), "--out", str(seq), "--set", "train.training.steps=4"]) == 0
    assert experiment.main([str(toy_file), "--out", str(par), "--set", "train.training.steps=4", "--parallel", "2"]) == 0
    for name in ("softpick", "softmax"):
        losses = [[r["loss"] for r in experiment.read_metrics(out / name / "train")] for out in (seq, par)]
        assert len(losses[1]) == 4 and losses[1] == pytest.approx(losses[0], rel=1e-5)
        assert (par / name / "experiment.log").is_file() and (par / name / "analysis" / "report.json").is_file()
    assert "| softpick |" in (par / "README.md").read_text()
    assert json.loads((par / "results.json").read_text())["softmax"]["train_s"] > 0


@pytest.mark.slow
def test_parallel_torchrun_variants_get_their_own_rendezvous_port(toy_file, tmp_path, monkeypatch):
    """nproc 2 x --parallel 2: two torchrun jobs (gloo on the CPU) at once, on ports 29500 and 29501."""
    monkeypatch.delenv("MASTER_PORT", raising=False)
    config = tmp_path / "two.toml"
    config.write_text(toy_file.read_text().replace('name = "toy"', 'name = "toy"\nnproc = 2'))
    out = tmp_path / "two"
    assert experiment.main([str(config), "--out", str(out), "--set", "train.training.steps=3", "--parallel", "2"]) == 0
    ports = {line.split(":")[-1] for name in ("softpick", "softmax")
             for line in (out / name / "train.log").read_text().splitlines() if line.startswith("launching")}
    assert ports == {"29500", "29501"} and (out / "README.md").is_file()


@pytest.mark.slow
def test_only_trains_the_named_variant_without_a_comparison(toy_file, tmp_path):
    out = tmp_path / "only"
    assert experiment.main([str(toy_file), "--out", str(out), "--set", "train.training.steps=2", "--only", "softmax"]) == 0
    assert (out / "softmax" / "analysis" / "report.json").is_file()
    assert not (out / "softpick" / "train").exists() and not (out / "README.md").exists()


@pytest.mark.parametrize("text, message", [
    ("[experiment]\nvariants = ['a']\n[model]\nmodel_type = 'x'\n[variants.a]\n", "at least two variants"),
    ("[experiment]\nvariants = ['a', 'b']\n[model]\nmodel_type = 'x'\n[variants.a]\n", "without a [variants.NAME]"),
    ("[model]\nhidden_size = 3\n", "needs model_type"),
    ("[trian]\n", "unknown tables ['trian']"),
    ("[experiment\n", "is not valid TOML"),
])
def test_bad_experiment_files_fail_with_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert cli_main(["experiment", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_set_parses_toml_values():
    config = {}
    experiment._set(config, "train.training.steps=50")
    experiment._set(config, "train.training.dataset=data/prose")
    experiment._set(config, "analyze.no_progress=true")
    assert config == {"train": {"training": {"steps": 50, "dataset": "data/prose"}}, "analyze": {"no_progress": True}}


@pytest.mark.parametrize("flags, message", [
    (["--only", "sofpick"], "--only names ['sofpick']"),
    (["--parallel", "0"], "--parallel must be >= 1"),
    (["--parallel", "2", "--only", "softmax"], "leave out --only"),
])
def test_bad_run_flags_fail_with_one_line(toy_file, tmp_path, capsys, flags, message):
    assert cli_main(["experiment", str(toy_file), "--out", str(tmp_path / "x"), *flags]) == 2
    assert message in capsys.readouterr().err
