"""``softpick <command> [args]``: one entry point that hands the rest of the line to each command.

Commands are looked up lazily, so a command's own imports (the trainer, the analysis, lm-eval, ...)
load only when it runs. Each target is a ``main(argv: list[str]) -> int | None`` function.
``softpick -h``, ``softpick --version`` and ``-h`` of train, generate, analyze, compare and lm-eval load
neither torch nor transformers (see :func:`softpick.help_only`), so they answer in well under a second.
"""

from __future__ import annotations

import importlib
import sys

from softpick import _quiet
from softpick.errors import run_command

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("softpick.demo:main", "train a tiny softpick model on the embedded corpus, offline, on CPU"),
    "data": ("softpick.corpus.cli:main", "build a pre-tokenized dataset from local text files, offline"),
    "train": ("softpick.train.trainer:main", "train with flame-compatible flags (torchrun for several GPUs)"),
    "experiment": ("softpick.experiment:main", "train variants alike, analyse and compare them (paper reproduction)"),
    "convert": ("softpick.train.convert:main", "convert checkpoints: dcp-to-hf, hf-to-dcp, fla-to-hf (the paper's fla models)"),
    "generate": ("softpick.generate:main", "generate text from a saved model (streamed, KV cache)"),
    "analyze": ("softpick.analysis.cli:analyze_main", "sinks, activations, sparsity, quantization report"),
    "compare": ("softpick.analysis.cli:compare_main", "put two or more analysis reports side by side"),
    "lm-eval": ("softpick.analysis.lm_eval_cli:main", "lm_eval with softpick registered (takes every lm_eval flag)"),
}


HELP_PARSERS: dict[str, str] = {
    "train": "softpick.train.config:build_parser",
    "generate": "softpick.generate:parser",
    "analyze": "softpick.analysis.cli:analyze_parser",
    "compare": "softpick.analysis.cli:compare_parser",
}
"""Commands whose ``-h`` is printed from a parser that imports no torch (``lm-eval -h`` is lm-eval's own,
which imports no torch either)."""


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: softpick <command> [options]   (softpick <command> -h for its options; softpick --version)",
             "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    _quiet.install()  # every command, before any of its imports (the one place start-up noise is filtered)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from softpick import __version__

        print(f"softpick {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"softpick: unknown command {name!r}.\n\n{_usage()}", file=sys.stderr)
        return 2
    if name in HELP_PARSERS and ("-h" in rest or "--help" in rest):
        module_name, func_name = HELP_PARSERS[name].split(":")
        getattr(importlib.import_module(module_name), func_name)().print_help()
        return 0
    module_name, func_name = COMMANDS[name][0].split(":")

    def command(args: list[str]) -> int | None:
        return getattr(importlib.import_module(module_name), func_name)(args)

    return run_command(name, command, rest)


if __name__ == "__main__":
    sys.exit(main())
