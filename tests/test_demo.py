"""``softpick demo`` end to end at a small size: the loss falls, files are saved and reload."""

import dataclasses
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from softpick import demo
from softpick.models import SoftpickForCausalLM

TINY = dict(steps=20, seq_len=32, batch_size=8, hidden_size=64, num_layers=2, val_rows=8, max_new_tokens=8,
            threads=1, progress=False)


@pytest.fixture(autouse=True)
def _private_cache_and_threads(tmp_path, monkeypatch):
    """Keep the tokenizer cache inside tmp_path, and undo the demo's process-wide thread setting."""
    monkeypatch.setenv("SOFTPICK_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_demo_trains_saves_and_reloads(tmp_path, capsys):
    options = demo.DemoOptions(out=str(tmp_path / "run"), **TINY)
    result = demo.run(options)
    assert result.val_loss_after < result.val_loss_before - 1.0
    assert result.final_train_loss < result.val_loss_before - 1.0
    assert result.sample.startswith(demo.PROMPT) and len(result.sample) > len(demo.PROMPT)
    printed = capsys.readouterr().out
    assert f"validation loss before training: {result.val_loss_before:.3f}" in printed
    assert f"final loss {result.final_train_loss:.3f}" in printed

    saved = json.loads((tmp_path / "run" / "demo_result.json").read_text())
    assert saved["val_loss_after"] == result.val_loss_after and saved["options"]["steps"] == 20

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run"))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "run"))
    assert isinstance(model, SoftpickForCausalLM) and model.config.attn_type == "softpick"
    prompt = tokenizer(demo.PROMPT, return_tensors="pt")
    assert prompt.input_ids[0, 0].item() == tokenizer.bos_token_id
    generated = model.generate(**prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    assert tokenizer.decode(generated[0], skip_special_tokens=True) == result.sample

    again = demo.run(dataclasses.replace(options, out=str(tmp_path / "again")))
    assert (again.final_train_loss, again.val_loss_after, again.sample) == (
        result.final_train_loss, result.val_loss_after, result.sample,
    )


def test_token_rows_start_with_bos():
    tokenizer = demo.embedded_tokenizer()
    rows = demo.token_rows(tokenizer, ["one two three four five six", "seven"], seq_len=4)
    assert rows.shape == (3, 4)
    assert rows[:, 0].tolist() == [tokenizer.bos_token_id] * 3
    assert tokenizer.eos_token_id in rows[:, 1:].flatten().tolist()
    with pytest.raises(ValueError, match="seq_len 100 is longer"):
        demo.token_rows(tokenizer, ["one"], seq_len=100)


def test_parse_args():
    options = demo.parse_args(["--steps", "5", "--attn-type", "softmax", "--seq-len", "64", "--out", "x"])
    assert (options.steps, options.attn_type, options.seq_len, options.out) == (5, "softmax", 64, "x")
    with pytest.raises(SystemExit):
        demo.parse_args(["--steps", "0"])
    with pytest.raises(SystemExit):
        demo.parse_args(["--attn-type", "linear"])


def test_warmup_cosine():
    assert demo.warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert demo.warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert demo.warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert demo.warmup_cosine(100, 100, 10) == pytest.approx(0.1)
