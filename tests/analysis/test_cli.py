"""`softpick analyze` and `softpick compare` end to end on tiny models saved to disk, offline."""

import importlib.util
import json

import pytest
import torch
import transformers

from softpick.analysis.data import load_documents
from softpick.cli import main
from softpick.corpus import embedded_documents, embedded_tokenizer
from softpick.models import SoftpickConfig, SoftpickForCausalLM

HAS_LM_EVAL = importlib.util.find_spec("lm_eval") is not None
HAS_HQQ = importlib.util.find_spec("hqq") is not None
PER_LAYER_PLOTS = ["sink_first_token_mass.png", "sink_rate.png", "sparsity.png", "kurtosis.png", "max_activation.png",
                   "max_to_median.png", "sink_heads.png"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A softpick model, a Llama (softmax) model, both with the embedded tokenizer, and a JSON-lines file."""
    root = tmp_path_factory.mktemp("analysis_cli")
    tokenizer = embedded_tokenizer()
    torch.manual_seed(0)
    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    softpick = SoftpickForCausalLM(SoftpickConfig(**common, attn_type="softpick", initializer_range=0.05))
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    for name, model in (("softpick", softpick), ("llama", llama)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    with open(root / "docs.jsonl", "w") as f:
        for doc in embedded_documents("validation", 20):
            f.write(json.dumps({"text": doc}) + "\n")
    return root


@pytest.fixture(scope="module")
def reports(workdir):
    """Run analyze on both models; the softpick run asks for every section."""
    base = ["--data", str(workdir / "docs.jsonl"), "--num-samples", "5", "--seq-len", "40", "--batch-size", "2",
            "--no-progress"]
    methods = "rtn,hqq" if HAS_HQQ else "rtn"
    full = ["--quant-bits", "8,2", "--quant-methods", methods, "--passkey-lengths", "48", "--passkey-trials", "1"]
    if HAS_LM_EVAL:
        full += ["--tasks", "local", "--eval-limit", "3", "--eval-batch-size", "2"]
    assert main(["analyze", str(workdir / "softpick"), "--out", str(workdir / "out_softpick"), *base, *full]) == 0
    assert main(["analyze", str(workdir / "llama"), "--out", str(workdir / "out_llama"), *base,
                 "--quant-bits", "none", "--padding-side", "left"]) == 0
    return workdir / "out_softpick", workdir / "out_llama"


@pytest.mark.slow
def test_analyze_writes_every_file(reports):
    out, _ = reports
    for name in ["report.json", "report.md", "quantization.png", "passkey.png", *PER_LAYER_PLOTS]:
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["attention"].startswith("softpick")
    assert report["settings"]["num_samples"] == 5
    assert len(report["sink"]["first_token_mass_per_head"]) == 2
    assert len(report["sink"]["first_token_mass_per_head"][0]) == 4
    assert 0.0 <= report["sparsity"]["sparsity"] <= 100.0
    assert len(report["activations"]["layers"]) == 2
    assert report["perplexity"]["perplexity"] > 1
    assert {(r["method"], r["bits"]) for r in report["quantization"]["results"]} >= {("rtn", 8), ("rtn", 2)}
    assert list(report["passkey"]["accuracy"]) == ["48"]
    markdown = (out / "report.md").read_text()
    assert "## Quantization" in markdown and "## Passkey retrieval" in markdown and "sink rate" in markdown
    if HAS_LM_EVAL:
        assert "acc,none" in report["lm_eval"]["results"]["softpick_local_choice"]
        assert "word_perplexity,none" in report["lm_eval"]["results"]["softpick_local_ppl"]


@pytest.mark.slow
def test_compare_puts_reports_side_by_side(reports, tmp_path):
    out_softpick, out_llama = reports
    assert main(["compare", str(out_softpick), str(out_llama), "--out", str(tmp_path), "--labels", "softpick,softmax"]) == 0
    table = (tmp_path / "comparison.md").read_text()
    assert "| metric | softpick | softmax |" in table
    sink_row = next(line for line in table.splitlines() if line.startswith("| sink rate (%)"))
    assert sink_row.count("|") == 4
    for name in ["sink_first_token_mass.png", "sparsity.png", "kurtosis.png", "quantization.png"]:
        assert (tmp_path / name).is_file(), name


@pytest.mark.slow
def test_compare_needs_two_existing_reports(reports, tmp_path, capsys):
    out_softpick, _ = reports
    assert main(["compare", str(out_softpick), str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")]) == 2
    assert "nowhere/report.json does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", str(out_softpick), "--out", str(tmp_path / "c")])


def test_missing_model_or_data_fail_fast(workdir, tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "no_model"), "--out", str(tmp_path / "o")]) == 2
    assert "no_model does not exist" in capsys.readouterr().err
    assert main(["analyze", str(workdir / "llama"), "--data", str(tmp_path / "missing.jsonl"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "missing.jsonl does not exist" in capsys.readouterr().err
    (tmp_path / "no_config").mkdir()
    assert main(["analyze", str(tmp_path / "no_config"), "--out", str(tmp_path / "o")]) == 2
    assert "no_config/config.json does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o" / "report.json").exists()


def test_data_formats(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\nstill first\n\nsecond doc\n\n\n")
    assert load_documents(tmp_path / "a.txt") == ["first doc\nstill first", "second doc"]
    (tmp_path / "b.json").write_text(json.dumps([{"content": "x y"}, {"content": "z"}]))
    assert load_documents(tmp_path / "b.json") == ["x y", "z"]
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps({"text": "train doc"}) + "\n")
    (folder / "validation.jsonl").write_text(json.dumps({"text": "val doc"}) + "\n")
    assert load_documents(folder, split="validation") == ["val doc"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["p1", "p2"]}), tmp_path / "c.parquet")
    assert load_documents(tmp_path / "c.parquet") == ["p1", "p2"]
    with pytest.raises(ValueError, match="'text' or 'content'"):
        (tmp_path / "d.jsonl").write_text(json.dumps({"body": "no"}) + "\n")
        load_documents(tmp_path / "d.jsonl")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LM_EVAL, reason="lm-eval is not installed (pip install 'softpick[eval]')")
def test_lm_eval_own_cli_loads_softpick_models(reports, workdir, capsys):
    """`python -m softpick.analysis.lm_eval_cli --model hf --model_args pretrained=DIR` works for our model."""
    from softpick.analysis import lm_eval_cli

    out, _ = reports
    lm_eval_cli.main(["--model", "hf", "--model_args", f"pretrained={workdir / 'softpick'},dtype=float32",
                      "--tasks", "softpick_local_choice", "--include_path", str(out / "lm_eval_tasks"),
                      "--limit", "2", "--device", "cpu", "--batch_size", "2"])
    assert "softpick_local_choice" in capsys.readouterr().out


def test_default_labels_are_the_shortest_distinct_path_ends(tmp_path):
    from softpick.analysis.cli import default_labels

    assert default_labels([str(tmp_path / "a"), str(tmp_path / "b")]) == ["a", "b"]
    assert default_labels([str(tmp_path / "x" / "analysis"), str(tmp_path / "y" / "analysis")]) == [
        "x/analysis", "y/analysis"]


def test_analyze_options_are_the_command_line_typed():
    from softpick.analysis.cli import analyze_options, analyze_parser

    options = analyze_options("m", "o", num_samples=8, quant_bits="8,4", seq_len="64", no_progress=True)
    flags = analyze_parser().parse_args(["m", "--out", "o", "--num-samples", "8", "--quant-bits", "8,4",
                                         "--seq-len", "64", "--no-progress"])
    assert options == flags and options.quant_bits == [8, 4] and options.seq_len == 64
    assert analyze_options("m", "o", quant_bits=[2]).quant_bits == [2]
    with pytest.raises(ValueError, match=r"unknown analyze option\(s\) \['num_sample'\]"):
        analyze_options("m", "o", num_sample=8)
    with pytest.raises(ValueError, match="--num-samples must be >= 1"):
        analyze_options("m", "o", num_samples=0)
    with pytest.raises(ValueError, match="--dtype must be one of"):
        analyze_options("m", "o", dtype="int3")


def test_option_defaults_are_the_measurement_modules_own():
    """analysis/cli.py repeats four constants so that -h imports no torch; they must not drift."""
    from softpick.analysis import cli, quantization, sink, sparsity

    assert cli.DEFAULT_SINK_EPS == sink.DEFAULT_SINK_EPS
    assert cli.DEFAULT_ZERO_THRESHOLD == sparsity.DEFAULT_ZERO_THRESHOLD
    assert cli.QUANT_METHODS == quantization.METHODS
    assert cli.DEFAULT_GROUP_SIZE == quantization.DEFAULT_GROUP_SIZE


@pytest.mark.slow
def test_analyze_defaults_to_the_trained_context_and_says_so(workdir, tmp_path, capsys):
    """A folder exported with its training context (softpick train writes it) is evaluated at that length;
    one without it at 512 capped by max_position_embeddings; report.md names the length."""
    from softpick.models.export import save_portable

    model_dir = tmp_path / "model"
    model = SoftpickForCausalLM.from_pretrained(workdir / "softpick")

    save_portable(model, model_dir, tokenizer=embedded_tokenizer(), trained_context_len=24)
    assert json.loads((model_dir / "config.json").read_text())["trained_context_len"] == 24
    base = ["--data", str(workdir / "docs.jsonl"), "--num-samples", "2", "--quant-bits", "none", "--no-progress"]
    assert main(["analyze", str(model_dir), "--out", str(tmp_path / "a"), *base]) == 0
    assert "at up to 24 tokens, the trained context" in capsys.readouterr().out
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["settings"]["seq_len"] == 24 and report["settings"]["trained_context_len"] == 24
    assert "evaluated at up to 24 tokens per sample (trained at 24)" in (tmp_path / "a" / "report.md").read_text()
    # longer than trained: evaluated as asked, with a note
    assert main(["analyze", str(model_dir), "--out", str(tmp_path / "b"), "--seq-len", "48", *base]) == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["settings"]["seq_len"] == 48 and any("beyond the 24" in n for n in report["notes"])
    # no trained context recorded: 512 capped at max_position_embeddings (256 here)
    config = json.loads((model_dir / "config.json").read_text())
    del config["trained_context_len"]
    (model_dir / "config.json").write_text(json.dumps(config))
    assert main(["analyze", str(model_dir), "--out", str(tmp_path / "c"), *base]) == 0
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert report["settings"]["seq_len"] == 256 and report["settings"]["trained_context_len"] is None
    assert "(training context unknown)" in (tmp_path / "c" / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LM_EVAL, reason="lm-eval is not installed (pip install 'softpick[eval]')")
def test_hub_tasks_offline_fail_in_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import datasets
    from huggingface_hub import constants

    from softpick.analysis.evaluation import uncached_hub_datasets, write_local_tasks

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    # the model folder does not exist: the task check comes first
    code = main(["analyze", str(tmp_path / "no-model"), "--out", str(tmp_path / "out"), "--tasks",
                 "lambada_openai", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "lambada_openai (EleutherAI/lambada_openai)" in err[0] and "HF_HUB_OFFLINE is set" in err[0]
    assert "--tasks local" in err[0] and "--tasks-dir" in err[0]
    # a cached hub data set and tasks from local YAML files pass
    (tmp_path / "datasets" / "EleutherAI___lambada_openai").mkdir(parents=True)
    local = write_local_tasks(embedded_documents("validation", 20), tmp_path / "tasks")
    assert uncached_hub_datasets(["lambada_openai", "softpick_local_choice"], [str(local)]) == {}


@pytest.mark.skipif(not HAS_LM_EVAL, reason="lm-eval is not installed (pip install 'softpick[eval]')")
def test_lm_eval_cli_offline_hub_task_is_one_line(tmp_path, monkeypatch, capsys):
    import datasets
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    code = main(["lm-eval", "--model", "hf", "--model_args", f"pretrained={tmp_path}", "--tasks", "lambada_openai"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "lambada_openai (EleutherAI/lambada_openai)" in err[0], err
    assert "--include_path" in err[0]
