"""``softpick analyze`` and ``softpick compare``: the paper's measurements in one command.

    softpick analyze MODEL_DIR [--data FILE_OR_DATASET] --out DIR [options]
    softpick compare DIR_A DIR_B [...] --out DIR

``analyze`` loads any causal LM saved with ``save_pretrained`` (softpick's, Llama, GPT-2, ...) and
its tokenizer, takes ``--num-samples`` documents of ``--data`` (default: the embedded validation
split) cut at ``--seq-len`` tokens, and writes DIR/report.json, DIR/report.md and PNG plots:
sink rate, attention sparsity, hidden-state kurtosis and massive activations, perplexity, a
weight-only quantization study, and optionally lm-eval tasks and passkey retrieval.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
from pathlib import Path

from softpick.errors import one_line

# The option defaults of the measurement modules, repeated here so that ``-h`` imports no torch
# (tests/analysis/test_cli.py checks that they equal the modules' own constants).
DEFAULT_SINK_EPS = 0.3
DEFAULT_ZERO_THRESHOLD = 1e-5
QUANT_METHODS = ("rtn", "hqq", "torchao", "quanto")
DEFAULT_GROUP_SIZE = 64
DTYPES = ("float32", "bfloat16", "float16")
FALLBACK_SEQ_LEN = 512
"""Tokens per sample for a model folder that does not say the context it was trained at."""


def int_list(text: str) -> list[int]:
    """'8,4,3,2' -> [8, 4, 3, 2]; 'none' or '' -> [] (an argparse type)."""
    if text.strip().lower() in ("", "none"):
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _str_list(text: str) -> list[str]:
    return [] if text.strip().lower() in ("", "none") else [x.strip() for x in text.split(",") if x.strip()]


def analyze_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="softpick analyze", description=__doc__.split("\n\n")[2],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model_dir", help="folder written by save_pretrained (config.json + weights + tokenizer)")
    p.add_argument("--data", default=None, help="a .txt/.jsonl/.json/.parquet file, a folder, or a datasets name; "
                   "default: the embedded corpus")
    p.add_argument("--split", default="validation", help="split for datasets and the embedded corpus")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder if MODEL_DIR has none")
    p.add_argument("--num-samples", type=int, default=64, help="documents to analyse")
    p.add_argument("--seq-len", type=int, default=None,
                   help="tokens per sample (longer documents are cut); default: the context the model was trained "
                   f"at (trained_context_len in config.json, written by softpick's export), else {FALLBACK_SEQ_LEN} "
                   "capped at max_position_embeddings")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--padding-side", choices=("right", "left"), default="right")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="low precision makes softmax underflow count as sparsity")
    p.add_argument("--sink-eps", type=float, default=DEFAULT_SINK_EPS, help="first-token mass above which a head is a sink")
    p.add_argument("--zero-threshold", type=float, default=DEFAULT_ZERO_THRESHOLD,
                   help="attention weights <= this count as zero")
    p.add_argument("--top-k", type=int, default=10, help="largest activations listed per layer")
    p.add_argument("--quant-bits", type=int_list, default=[8, 4, 3, 2], help="weight bits to study; 'none' skips")
    p.add_argument("--quant-methods", type=_str_list, default=list(QUANT_METHODS),
                   help=f"any of {','.join(QUANT_METHODS)}")
    p.add_argument("--quant-group-size", type=int, default=DEFAULT_GROUP_SIZE)
    p.add_argument("--tasks", type=_str_list, default=[],
                   help="lm-eval tasks; 'local' = tasks built from --data (softpick_local_choice, softpick_local_ppl), "
                   "offline; hub tasks (lambada_openai, ...) need their dataset online or in the datasets cache "
                   "(HF_DATASETS_OFFLINE=1 then fails at once, in one line)")
    p.add_argument("--tasks-dir", action="append", default=[], help="folder of lm-eval task YAML files (repeatable)")
    p.add_argument("--eval-limit", type=int, default=None, help="at most this many documents per lm-eval task")
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--passkey-lengths", type=int_list, default=[], help="prompt lengths in tokens, e.g. 256,1024")
    p.add_argument("--passkey-trials", type=int, default=5, help="prompts per length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def describe_model(model, model_dir: str) -> dict:
    from softpick.analysis.collect import attn_implementation, decoder_layers

    config = model.config
    if hasattr(config, "attn_type"):  # softpick's config: attn_type and its switches, attn_impl naming the kernel
        switches = "".join([" + ssmax" if getattr(config, "ssmax", False) else "",
                            f" + {config.output_gate} output gate" if getattr(config, "output_gate", None) else ""])
        attention = f"{config.attn_type}{switches} (attn_impl {getattr(config, 'attn_impl', None) or 'auto'})"
    else:
        attention = f"softmax ({attn_implementation(model)})"
    layers = decoder_layers(model)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    return {
        "path": str(model_dir),
        "class": type(model).__name__,
        "model_type": config.model_type,
        "num_layers": len(layers),
        "num_heads": heads,
        "hidden_size": getattr(config, "hidden_size", None),
        "parameters": sum(p.numel() for p in model.parameters()),
        "attention": attention,
    }


def _versions() -> dict:
    import torch
    import transformers

    import softpick

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "softpick": softpick.__version__}


def analyze(model_dir: str | Path, args: argparse.Namespace) -> "Report":
    """Measure the model saved in ``model_dir`` with ``args`` (the options of ``softpick analyze``, as
    :func:`analyze_parser` or :func:`analyze_options` give them; their ``model_dir`` is not read), write
    the report to ``args.out`` and return it."""
    import torch

    import softpick  # noqa: F401  (registers softpick_transformer with the transformers Auto classes)
    from softpick.analysis import evaluation, quantization
    from softpick.analysis.activations import ActivationObserver
    from softpick.analysis.collect import run_pass
    from softpick.analysis.data import load_documents, make_batches, tokenize_samples
    from softpick.analysis.passkey import compute_passkey
    from softpick.analysis.perplexity import PerplexityObserver
    from softpick.analysis.report import Report
    from softpick.analysis.sink import SinkObserver
    from softpick.analysis.sparsity import SparsityObserver
    from softpick.models.loading import load_model_and_tokenizer

    model_dir = str(model_dir)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)
    progress = not args.no_progress
    notes = []
    # Fail fast on missing inputs or packages, before any long computation.
    if args.tasks:
        evaluation.require_lm_eval()
    for folder in args.tasks_dir:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"--tasks-dir {folder} is not a folder.")
    hub_tasks = [t for t in args.tasks if t != "local"]
    if hub_tasks:
        check_offline_tasks(hub_tasks, args.tasks_dir)
    documents = load_documents(args.data, args.split)
    model, tokenizer = load_model_and_tokenizer(model_dir, args.tokenizer, args.device, getattr(torch, args.dtype))
    max_positions = getattr(model.config, "max_position_embeddings", None)
    trained = getattr(model.config, "trained_context_len", None)
    if args.seq_len is None:
        args.seq_len = trained or (min(FALLBACK_SEQ_LEN, max_positions) if max_positions else FALLBACK_SEQ_LEN)
    for name, length in [("--seq-len", args.seq_len)] + [("--passkey-lengths", n) for n in args.passkey_lengths]:
        if max_positions is not None and length > max_positions:
            raise ValueError(f"{name} {length} exceeds the model's max_position_embeddings {max_positions}.")
    samples = tokenize_samples(tokenizer, documents, args.num_samples, args.seq_len)
    batches = make_batches(samples, args.batch_size, padding_side=args.padding_side)

    # One forward pass per batch feeds every per-layer measurement.
    observers = [SinkObserver(args.sink_eps), SparsityObserver(args.zero_threshold), ActivationObserver(args.top_k),
                 PerplexityObserver()]
    run_pass(model, batches, observers, progress=progress, desc="attention, activations, perplexity")
    sink, sparsity, activations, perplexity = observers
    report = Report(
        model=describe_model(model, model_dir),
        settings={
            "data": args.data or f"embedded corpus ({args.split})",
            "num_samples": len(samples), "seq_len": args.seq_len, "trained_context_len": trained,
            "tokens": sum(len(s) for s in samples),
            "batch_size": args.batch_size, "padding_side": args.padding_side, "device": str(args.device),
            "dtype": args.dtype, "seed": args.seed, "versions": _versions(),
        },
        perplexity=perplexity.result(),
        sink=sink.result(tokenizer),
        sparsity=sparsity.result(),
        activations=activations.result(tokenizer),
    )

    if args.quant_bits and args.quant_methods:
        report.quantization = quantization.compute_quantization_study(
            model, batches, methods=tuple(args.quant_methods), bits=tuple(args.quant_bits),
            group_size=args.quant_group_size, baseline=report.perplexity, progress=progress,
        )
    if args.tasks:
        tasks, tasks_dir = list(args.tasks), list(args.tasks_dir)
        if "local" in tasks:
            tasks.remove("local")
            tasks += list(evaluation.LOCAL_TASKS)
            tasks_dir.append(str(evaluation.write_local_tasks(documents, Path(args.out) / "lm_eval_tasks")))
        report.lm_eval = evaluation.compute_lm_eval(
            model, tokenizer, tasks, tasks_dir=tasks_dir or None, batch_size=args.eval_batch_size, limit=args.eval_limit
        )
    if args.passkey_lengths:
        report.passkey = compute_passkey(model, tokenizer, args.passkey_lengths, trials=args.passkey_trials,
                                            seed=args.seed, progress=progress)
    if trained and args.seq_len > trained:
        notes.append(f"Evaluated at {args.seq_len} tokens per sample, beyond the {trained} the model was trained "
                     f"at: perplexity and attention statistics include length extrapolation.")
    if args.dtype != "float32":
        notes.append("Low-precision attention weights underflow: sparsity counts rounding zeros too.")
    non_finite = non_finite_fields(report.to_dict())
    if non_finite:
        shown = ", ".join(non_finite[:6]) + (f" and {len(non_finite) - 6} more" if len(non_finite) > 6 else "")
        notes.append(f"The model produced non-finite values (NaN/Inf) in {shown}: they are null in report.json, "
                     f"n/a in the tables and left out of the plots.")
        print(f"softpick analyze: warning: non-finite values (NaN/Inf) in {shown}", file=sys.stderr)
    report.notes = notes
    report.write(args.out)
    return report


def check_offline_tasks(tasks: list[str], tasks_dir: list[str]) -> None:
    """Offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set, or no connection to the hub within 3 s): ValueError
    in one line, before the model loads, when a task's data set is not cached. Online: nothing."""
    import os

    from softpick.analysis import evaluation
    from softpick.hub import offline_reason

    if os.environ.get("HF_DATASETS_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        reason = "HF_DATASETS_OFFLINE is set"
    else:
        reason = offline_reason()
    if reason is None:
        return
    missing = evaluation.uncached_hub_datasets(tasks, tasks_dir)
    if missing:
        named = ", ".join(f"{task} ({path})" for task, path in sorted(missing.items()))
        raise ValueError(
            f"--tasks {named}: the data set is on the hub, {reason}, and it is not in the datasets cache; run it "
            f"once online to cache it, or evaluate offline with --tasks local (tasks built from --data) or your own "
            f"task YAML files with --tasks-dir (docs/ecosystem.md)."
        )


POSITIVE_OPTIONS = ("num_samples", "seq_len", "batch_size", "passkey_trials", "top_k")
"""Options that must be >= 1 (when given: seq_len None means the trained context)."""


def analyze_options(model_dir: str | Path, out: str | Path, **values) -> argparse.Namespace:
    """The options of ``softpick analyze MODEL_DIR --out OUT``, typed: the parser's defaults with
    ``values`` (the option names with underscores, e.g. ``num_samples=8, quant_bits=[4]``) over them,
    for programs that run the analysis in-process (``softpick demo``, ``softpick experiment``).
    ValueError names an unknown option or a value the command line would refuse."""
    parser = analyze_parser()
    args = parser.parse_args([str(model_dir), "--out", str(out)])
    actions = {action.dest: action for action in parser._actions}
    unknown = sorted(set(values) - set(vars(args)))
    if unknown:
        raise ValueError(f"unknown analyze option(s) {unknown}; see softpick analyze -h.")
    for name, value in values.items():
        action = actions[name]
        try:  # a string is read as on the command line ("8,4,3,2", "200"), other values are taken as they are
            value = action.type(value) if isinstance(value, str) and action.type else value
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            raise ValueError(f"bad value for --{name.replace('_', '-')}: {error}") from None
        if action.choices is not None and value not in action.choices:
            raise ValueError(f"--{name.replace('_', '-')} must be one of {list(action.choices)}, got {value!r}.")
        setattr(args, name, value)
    for name in POSITIVE_OPTIONS:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    return args


def non_finite_fields(value, path: str = "") -> list[str]:
    """Dotted paths of the NaN/Inf floats in a report (list items as ``[i]``)."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in non_finite_fields(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in non_finite_fields(v, f"{path}[{i}]")]
    return []


def analyze_main(argv: list[str]) -> int:
    parser = analyze_parser()
    args = parser.parse_args(argv)
    for name in POSITIVE_OPTIONS:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        print(f"softpick analyze: error: --out {args.out} is a file; give a folder for the report.", file=sys.stderr)
        return 2
    try:
        report = analyze(args.model_dir, args)
    except (FileNotFoundError, ImportError, ValueError) as error:
        print(f"softpick analyze: error: {one_line(error)}", file=sys.stderr)
        return 2
    settings = report.settings
    trained = settings.get("trained_context_len")
    print(f"wrote {Path(args.out) / 'report.md'} ({settings['num_samples']} samples at up to {settings['seq_len']} "
          f"tokens{f', the trained context' if trained == settings['seq_len'] else ''})")
    return 0


def default_labels(folders: list[str]) -> list[str]:
    """The shortest distinct path suffixes: [a/analysis, b/analysis] -> [a/analysis, b/analysis]; [x, y] -> [x, y]."""
    parts = [Path(folder).resolve().parts for folder in folders]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(folder) for folder in folders]  # the same folder twice: --labels must tell them apart


def compare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softpick compare",
                                     description="Put two or more `softpick analyze` reports side by side.")
    parser.add_argument("reports", nargs="+", help="folders holding report.json")
    parser.add_argument("--out", required=True, help="output folder for comparison.md and plots")
    parser.add_argument("--labels", type=_str_list, default=None, help="comma-separated names (default: the shortest distinct ends of the folder paths)")
    return parser


def compare_main(argv: list[str]) -> int:
    parser = compare_parser()
    args = parser.parse_args(argv)
    if len(args.reports) < 2:
        parser.error(f"compare needs at least two report folders, got {len(args.reports)}.")
    labels = args.labels or default_labels(args.reports)
    if len(labels) != len(args.reports) or len(set(labels)) != len(labels):
        parser.error(f"--labels must give {len(args.reports)} distinct names, got {labels}.")
    from softpick.analysis.report import Report, write_comparison

    try:
        reports = {label: Report.load(folder) for label, folder in zip(labels, args.reports)}
    except (FileNotFoundError, ValueError) as error:
        print(f"softpick compare: error: {error}", file=sys.stderr)
        return 2
    write_comparison(reports, args.out)
    print(f"wrote {Path(args.out) / 'comparison.md'}")
    return 0
