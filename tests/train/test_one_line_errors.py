"""A user mistake in generate, analyze, data or convert ends in one line on stderr and exit code 2.

Each case goes through :func:`softpick.errors.run_command`, the path ``softpick <command>`` takes.
The model folder is a tiny softpick model saved with the word tokenizer of train_utils.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from train_utils import make_tokenizer

from softpick.errors import run_command


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    import softpick.models  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("one_line") / "model"
    make_tokenizer(out)
    config = AutoConfig.for_model("softpick_transformer", hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                  num_key_value_heads=2, num_hidden_layers=2, vocab_size=64, attn_impl="naive",
                                  max_position_embeddings=64)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(out))  # the folder is whole
    return out


def one_line(capsys, prefix: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(prefix)]
    assert len(err) == 1, err
    return err[0]


def broken(model_dir: Path, tmp_path: Path, how: str) -> Path:
    folder = tmp_path / how
    shutil.copytree(model_dir, folder)
    weights = folder / "model.safetensors"
    if how == "bad_config":
        (folder / "config.json").write_text('{"model_type": ')
    elif how == "no_weights":
        weights.unlink()
    elif how == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "wrong_shape":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    return folder


@pytest.mark.parametrize("how, named", [
    ("bad_config", "config.json' is not valid json"), ("no_weights", "holds no weights"),
    ("truncated_weights", "do not load"), ("wrong_shape", "do not load"),
])
def test_analyze_and_generate_on_a_broken_model_folder(model_dir, tmp_path, capsys, how, named):
    from softpick.analysis.cli import analyze_main
    from softpick.generate import main as generate_main

    folder = broken(model_dir, tmp_path, how)
    assert run_command("analyze", analyze_main, [str(folder), "--out", str(tmp_path / "a")]) == 2
    assert named in one_line(capsys, "softpick analyze")
    assert run_command("generate", generate_main, [str(folder), "--prompt", "w1"]) == 2
    assert named in one_line(capsys, "softpick generate")


@pytest.mark.parametrize("flag, value, named", [("--top-p", "2", "--top-p must be in (0, 1]"),
                                                ("--top-k", "0", "--top-k must be at least 1")])
def test_generate_sampling_options(model_dir, capsys, flag, value, named):
    from softpick.generate import main as generate_main

    argv = [str(model_dir), "--prompt", "w1", "--temperature", "0.7", flag, value]
    assert run_command("generate", generate_main, argv) == 2
    assert named in one_line(capsys, "softpick generate")


def test_analyze_reports_a_model_that_produces_nan(model_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from softpick.analysis.cli import analyze_main

    folder = broken(model_dir, tmp_path, "nan")
    weights = load_file(str(folder / "model.safetensors"))
    weights["model.embed_tokens.weight"].fill_(1.0)  # finite weights whose logits overflow to inf (NaN weights
    weights["lm_head.weight"].fill_(3e38)  # are refused at load: test_hostile_models)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "report"
    argv = [str(folder), "--out", str(out), "--num-samples", "2", "--seq-len", "16", "--quant-bits", "none"]
    assert run_command("analyze", analyze_main, argv) == 0
    assert "non-finite values (NaN/Inf) in perplexity.loss" in one_line(capsys, "softpick analyze: warning")
    report = json.loads((out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert report["perplexity"]["loss"] is None and any("non-finite" in note for note in report["notes"])
    assert (out / "kurtosis.png").is_file() and "n/a" in (out / "report.md").read_text()


def test_data_build_checks_the_tokenizer_first(tmp_path, capsys):
    from softpick.corpus.cli import main as data_main

    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("A plain sentence of prose that the cleaner keeps. " * 40)
    (tmp_path / "empty").mkdir()
    for tokenizer, named in (("empty", "holds no tokenizer"), ("missing", "does not exist")):
        argv = ["build", str(tmp_path / "text"), "--out", str(tmp_path / "out"), "--tokenizer", str(tmp_path / tokenizer)]
        assert run_command("data", data_main, argv) == 2
        assert named in one_line(capsys, "softpick data")
    assert not (tmp_path / "out").exists()  # failed before any work


def test_convert_errors(tmp_path, capsys):
    from softpick.train.convert import main as convert_main

    assert run_command("convert", convert_main, ["dcp-to-hf", "--path", str(tmp_path)]) == 2
    assert "no checkpoints in" in one_line(capsys, "softpick convert")
    assert run_command("convert", convert_main, ["hf-to-dcp", "--model", str(tmp_path), "--checkpoint",
                                                 str(tmp_path / "c" / "step-0")]) == 2
    assert "has no config.json" in one_line(capsys, "softpick convert")
