"""Weight-only quantization: the torch RTN baseline, one library method, and the study's bookkeeping."""

import importlib.util

import pytest
import torch
from analysis_models import random_samples, tiny_gpt2, tiny_llama

from softpick.analysis import quantization
from softpick.analysis.data import make_batches
from softpick.analysis.perplexity import compute_perplexity
from softpick.analysis.quantization import (
    compute_quantization_study,
    quantizable_linears,
    quantize_model,
    rtn_quantize_weight,
)


@pytest.fixture
def peaked_llama():
    """A random Llama with large weights, so that its predictions (and perplexity) react to weight noise."""
    torch.manual_seed(0)
    return tiny_llama(hidden_size=64, intermediate_size=128, initializer_range=0.2)


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_rtn_levels_and_error(bits):
    weight = torch.randn(6, 96)
    quantized = rtn_quantize_weight(weight, bits, group_size=32)
    for group in range(3):
        w, q = weight[:, group * 32 : (group + 1) * 32], quantized[:, group * 32 : (group + 1) * 32]
        scale = (w.amax(-1) - w.amin(-1)) / (2**bits - 1)
        for row in range(6):
            assert q[row].unique().numel() <= 2**bits
            assert (q[row] - w[row]).abs().max() <= scale[row] * 0.5 + scale[row] * 1e-3 + 1e-6


def test_rtn_group_size_falls_back_to_whole_rows():
    weight = torch.randn(4, 48)  # 48 is not a multiple of 32: one group per row
    quantized = rtn_quantize_weight(weight, 2, group_size=32)
    assert all(quantized[r].unique().numel() <= 4 for r in range(4))


def _library(name: str, module: str):
    missing = importlib.util.find_spec(module) is None
    return pytest.param(name, marks=pytest.mark.skipif(missing, reason=f"{name} is not installed (softpick[quant])"))


@pytest.mark.parametrize("method", ["rtn", _library("hqq", "hqq"), _library("torchao", "torchao")])
def test_eight_bits_barely_change_perplexity_two_bits_do(peaked_llama, method):
    batches = make_batches(random_samples([20] * 4), 2)
    study = compute_quantization_study(peaked_llama, batches, methods=(method,), bits=(8, 2), group_size=32)
    base = study["baseline"]["perplexity"]
    ppl = {row["bits"]: row["perplexity"] for row in study["results"]}
    assert study["skipped"] == []
    change8, change2 = abs(ppl[8] / base - 1), abs(ppl[2] / base - 1)
    assert change8 < 0.01
    assert change2 > max(0.03, 3 * change8)


def test_quantize_model_copies_and_keeps_the_head(peaked_llama):
    before = {k: v.clone() for k, v in peaked_llama.state_dict().items()}
    quantized = quantize_model(peaked_llama, "rtn", 2, group_size=32)
    assert all(torch.equal(before[k], v) for k, v in peaked_llama.state_dict().items())
    assert torch.equal(quantized.lm_head.weight, peaked_llama.lm_head.weight)
    assert "lm_head" not in quantizable_linears(peaked_llama)
    assert not torch.equal(quantized.model.layers[0].mlp.up_proj.weight, peaked_llama.model.layers[0].mlp.up_proj.weight)


def test_gpt2_conv1d_layers_are_quantized():
    model = tiny_gpt2()
    batches = make_batches(random_samples([10, 8]), 2)
    same = quantize_model(model, "rtn", 8, group_size=32)
    assert len(quantizable_linears(same)) == 4 * 2  # c_attn, c_proj, c_fc, mlp c_proj per layer
    assert compute_perplexity(same, batches)["perplexity"] == pytest.approx(
        compute_perplexity(model, batches)["perplexity"], rel=1e-3)


def test_missing_library_and_bit_width_are_reported(peaked_llama, monkeypatch):
    monkeypatch.setattr(quantization, "_installed", lambda module: module != "hqq")
    batches = make_batches(random_samples([8, 8]), 2)
    study = compute_quantization_study(peaked_llama, batches, methods=("hqq", "rtn"), bits=(3,))
    assert [(r["method"], r["bits"]) for r in study["results"]] == [("rtn", 3)]
    assert "pip install 'softpick[quant]'" in study["skipped"][0]["reason"]
    assert "hqq" in quantization.method_unavailable("hqq", 4)
    assert "quanto" in quantization.method_unavailable("quanto", 3)  # no 3-bit type (or not installed)
    with pytest.raises(ValueError, match="method must be one of"):
        compute_quantization_study(peaked_llama, batches, methods=("gptq",))
    with pytest.raises(RuntimeError, match="not installed"):
        quantize_model(peaked_llama, "hqq", 4)


def test_width_a_library_lacks_shows_as_not_supported(peaked_llama, monkeypatch, tmp_path):
    """quanto has no 3-bit type: the study, report.md and comparison.md say "not supported", not a gap."""
    from softpick.analysis.report import Report, _quantization_section, write_comparison

    monkeypatch.setattr(quantization, "_installed", lambda module: True)  # as if quanto were installed
    batches = make_batches(random_samples([8, 8]), 2)
    study = compute_quantization_study(peaked_llama, batches, methods=("quanto",), bits=(3,))
    assert study["skipped"][0]["status"] == quantization.NOT_SUPPORTED and study["results"] == []
    report = Report(quantization=study, model={"path": "m", "class": "LlamaForCausalLM"}, settings={"data": "d"})
    assert report.quantization_cells() == {("quanto", 3): "not supported"}
    assert "| quanto | not supported |" in _quantization_section(report)  # the section of report.md
    write_comparison({"a": report, "b": report}, tmp_path / "cmp")
    assert "| quanto | 3 | not supported | not supported |" in (tmp_path / "cmp" / "comparison.md").read_text()
