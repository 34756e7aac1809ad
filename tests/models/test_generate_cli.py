"""``softpick generate``: streamed greedy text equals generate(); batches; sampling; clear errors."""

import pytest
import torch

from softpick import generate as generate_cli
from softpick.corpus import embedded_tokenizer

from tiny_models import tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tokenizer = embedded_tokenizer()
    model = tiny_model(vocab_size=len(tokenizer), eos_token_id=None)
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run(argv):
    return generate_cli.generate(generate_cli.parser().parse_args(argv))


def test_streamed_greedy_text_equals_generate(model_dir, capsys):
    texts = run([str(model_dir), "--prompt", "Once upon a time", "--max-new-tokens", "6", "--device", "cpu"])
    out, err = capsys.readouterr()
    tokenizer = embedded_tokenizer()
    model = tiny_model(vocab_size=len(tokenizer), eos_token_id=None)
    ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
    expected = tokenizer.decode(model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:],
                                skip_special_tokens=True)
    assert texts == [expected]
    assert out.strip() == ("Once upon a time" + expected).strip()
    assert "6 new tokens" in err and "tokens/s" in err


def test_batch_of_prompts_and_sampling(model_dir, capsys):
    argv = [str(model_dir), "--prompt", "The river", "--prompt", "Once upon a time there was", "--max-new-tokens",
            "5", "--temperature", "0.9", "--top-k", "10", "--seed", "3", "--device", "cpu"]
    first, second = run(argv), run(argv)
    assert first == second and len(first) == 2  # seeded sampling repeats
    out = capsys.readouterr().out
    assert "The river" + first[0] in out


@pytest.mark.parametrize("argv, message", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0."),
    (["--temperature", "-1"], "--temperature must be >= 0, got -1.0."),
])
def test_bad_options_fail_with_one_line(model_dir, capsys, argv, message):
    assert generate_cli.main([str(model_dir), "--prompt", "x", *argv]) == 2
    assert capsys.readouterr().err.strip() == f"softpick generate: {message}"


def test_threads_sets_torchs_cpu_threads(model_dir, capsys):
    before = torch.get_num_threads()
    try:
        run([str(model_dir), "--prompt", "x", "--max-new-tokens", "1", "--device", "cpu", "--threads", "1"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert generate_cli.main([str(model_dir), "--prompt", "x", "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip().endswith("--threads must be at least 1, got 0.")


def test_missing_model_folder(tmp_path, capsys):
    assert generate_cli.main([str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_softpick_models_decode_with_the_fast_loop(model_dir, monkeypatch, capsys):
    """The CLI runs fast_generate for softpick models (graphs or compile off with --no-graphs / --no-compile),
    same text as generate(); what the user waits for (a compile) goes to stderr."""
    from softpick.models import fast_generate as module

    calls = []
    real = module.fast_generate  # softpick.generate imports it when it runs (its -h imports no torch)

    def spy(*args, **kwargs):
        calls.append((kwargs["graphs"], kwargs["compile"]))
        kwargs["notice"]("compiling the decoding step")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "fast_generate", spy)
    argv = [str(model_dir), "--prompt", "Once upon a time", "--max-new-tokens", "6", "--device", "cpu"]
    texts = run(argv)
    assert "[compiling the decoding step]" in capsys.readouterr().err
    assert run(argv + ["--no-graphs"]) == texts and run(argv + ["--no-compile"]) == texts
    assert calls == [(None, None), (False, None), (None, False)]
