"""``softpick demo`` end to end at a small size: the trainer runs, the export reloads, the report is written."""

import dataclasses
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from softpick import demo
from softpick.models import SoftpickForCausalLM

TINY = dict(steps=20, seq_len=32, batch_size=8, hidden_size=64, num_layers=2, max_new_tokens=8, threads=1,
            progress=False, analysis_samples=8, quant_bits=[4])


@pytest.fixture(autouse=True)
def _private_cache_and_threads(tmp_path, monkeypatch):
    """Keep the tokenizer cache inside tmp_path, and undo the demo's process-wide thread setting."""
    monkeypatch.setenv("SOFTPICK_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_demo_trains_exports_samples_and_analyses(tmp_path, capsys):
    options = demo.DemoOptions(out=str(tmp_path / "run"), **TINY)
    result = demo.run(options)
    assert result.final_train_loss < result.first_train_loss - 1.0
    assert result.val_loss < result.first_train_loss - 1.0
    assert result.sample.startswith(demo.PROMPT) and len(result.sample) > len(demo.PROMPT)
    # softpick's maps are sparse (57.6% of causal weights at zero at this size, seed 0) and no head sinks
    assert result.sparsity > 30.0 and result.sink_rate == 0.0 and result.first_token_mass < 0.3
    assert set(result.quantization) >= {"rtn"} and set(result.quantization["rtn"]) == {"4"}
    printed = capsys.readouterr().out
    assert "training, same as: softpick train --job.dump_folder" in printed
    assert f"final loss {result.final_train_loss:.3f}" in printed
    assert f"validation loss {result.val_loss:.3f}" in printed
    assert f"sink rate {result.sink_rate:.1f}% (first-token attention {result.first_token_mass:.3f})" in printed
    assert f"attention sparsity {result.sparsity:.1f}%" in printed

    run_dir = tmp_path / "run"
    saved = json.loads((run_dir / "demo_result.json").read_text())
    assert saved["val_loss"] == result.val_loss and saved["options"]["steps"] == 20
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 20
    report = json.loads((run_dir / "analysis" / "report.json").read_text())
    assert report["perplexity"]["loss"] == result.val_loss
    assert (report["sink"]["sink_rate"], report["sparsity"]["sparsity"]) == (result.sink_rate, result.sparsity)
    assert (run_dir / "analysis" / "report.md").is_file()

    model = AutoModelForCausalLM.from_pretrained(str(run_dir / "hf"))
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "hf"))
    assert isinstance(model, SoftpickForCausalLM) and model.config.attn_type == "softpick"
    prompt = tokenizer(demo.PROMPT, return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    assert tokenizer.decode(generated[0], skip_special_tokens=True) == result.sample

    again = demo.run(dataclasses.replace(options, out=str(tmp_path / "again")))
    assert (again.final_train_loss, again.val_loss, again.sample) == (
        result.final_train_loss, result.val_loss, result.sample,
    )


@pytest.mark.slow
def test_demo_softmax_baseline_without_quantization(tmp_path):
    options = demo.DemoOptions(out=str(tmp_path / "softmax"), attn_type="softmax", **{**TINY, "quant_bits": []})
    result = demo.run(options)
    assert result.quantization == {}
    assert result.sparsity < 1.0  # softmax weights are never exactly zero (softpick's: 57.6% at this size)
    config = json.loads((tmp_path / "softmax" / "hf" / "config.json").read_text())
    assert config["model_type"] == "llama"  # a plain softmax export is a Llama checkpoint


def test_parse_args():
    options = demo.parse_args(["--steps", "5", "--attn-type", "softmax", "--seq-len", "64", "--out", "x"])
    assert (options.steps, options.attn_type, options.seq_len, options.out) == (5, "softmax", 64, "x")
    with pytest.raises(SystemExit):
        demo.parse_args(["--steps", "0"])
    with pytest.raises(SystemExit):
        demo.parse_args(["--attn-type", "linear"])
