"""``softpick generate`` / ``analyze`` / ``convert`` flags under hostile use: one line, the model folder
untouched; NaN weights are refused instead of being analysed or sampled as if they were masked scores."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hostile_utils import refused

from softpick.analysis.data import load_documents


@pytest.fixture
def model(finished, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(finished / "hf", out)
    return out


def generate(model, *extra):
    return ["generate", model, "--prompt", "w1 w2 w3", "--max-new-tokens", "2", "--device", "cpu", *extra]


def analyze(model, out, *extra):
    return ["analyze", model, "--out", out, "--num-samples", "2", "--seq-len", "8", "--quant-bits", "none",
            "--device", "cpu", *extra]


@pytest.mark.parametrize("extra,words", [
    (("--temperature", "nan"), "--temperature must be >= 0"),
    (("--temperature", "inf"), "--temperature must be >= 0"),
    (("--top-p", "nan"), "--top-p must be in (0, 1]"),
    (("--device", "cuda"), "no CUDA device"),
    (("--device", "cuda:7"), "cuda"),
    (("--device", "potato"), "is not a device"),
    (("--max-new-tokens", "0"), "--max-new-tokens must be at least 1"),
    (("--max-new-tokens", "1e9"), "invalid int value: '1e9'"),
])
def test_generate_flags(model, capsys, extra, words):
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    refused(capsys, generate(model, *extra), 2, words, keep=(model,))


def test_generate_max_new_tokens_beyond_memory_is_one_line(model, capsys):
    refused(capsys, generate(model, "--max-new-tokens", "1000000000000"), 2, "--max-new-tokens 1000000000000",
            "lower --max-new-tokens", keep=(model,))


def _nan_weights(model):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(model / "model.safetensors"))
    weights["model.layers.1.self_attn.o_proj.weight"][0, 0] = float("nan")
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})


def test_nan_weights_are_refused_by_generate_and_analyze(model, capsys, tmp_path):
    _nan_weights(model)
    words = ("hold NaN or Inf", "model.layers.1.self_attn.o_proj.weight")
    refused(capsys, generate(model), 2, *words, keep=(model,))
    refused(capsys, analyze(model, tmp_path / "report"), 2, *words, keep=(model,))
    assert not (tmp_path / "report").exists()


def test_analyze_device_and_data(model, capsys, tmp_path):
    if not torch.cuda.is_available():
        refused(capsys, analyze(model, tmp_path / "r1")[:-2] + ["--device", "cuda"], 2, "no CUDA device",
                keep=(model,))
    built = tmp_path / "built"  # what softpick data build writes: token ids, and the cleaned text beside them
    (built / "text").mkdir(parents=True)
    (built / "softpick_tokens.json").write_text(json.dumps({"format": "softpick-tokens-1"}))
    (built / "sources.jsonl").write_text(json.dumps({"text": "/data/a.txt"}) + "\n")
    (built / "text" / "validation.jsonl").write_text(json.dumps({"text": "w1 w2 w3 w4"}) + "\n")
    assert load_documents(str(built), "validation") == ["w1 w2 w3 w4"]  # the text, not the source paths
    (built / "text" / "validation.jsonl").unlink()
    refused(capsys, analyze(model, tmp_path / "r2", "--data", built), 2, "pre-tokenized folder", keep=(built,))


@pytest.mark.parametrize("argv,words", [
    (["convert", "dcp-to-hf", "--path", "x", "--step", "1e9"], "invalid int value"),
    (["convert", "dcp-to-hf"], "required"),
    (["convert", "nonsense"], "invalid choice"),
    (["convert", "dcp-to-hf", "--path", "/nonexistent/run"], "is not a folder"),
    (["convert", "hf-to-dcp", "--model", "/nonexistent", "--checkpoint", "/nonexistent/x"], "--model"),
    (["convert", "fla-to-hf", "/nonexistent", "/nonexistent/out"], "SRC"),
])
def test_convert_flags(capsys, argv, words):
    refused(capsys, argv, 2, words)
