"""lm-eval's own command line with softpick's models registered.

    softpick lm-eval --model hf --model_args pretrained=DIR --tasks TASKS [...]
    python -m softpick.analysis.lm_eval_cli ...            (the same)

Every lm-eval flag works as with ``lm_eval``; the only difference is ``import softpick`` first, which
registers ``softpick_transformer`` with transformers' Auto classes, so ``AutoModelForCausalLM``
inside lm-eval can load our checkpoints.
"""

from __future__ import annotations

import importlib.util
import sys

from softpick.errors import UserError


def main(argv: list[str] | None = None) -> int:
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError("lm-eval is not installed: pip install 'softpick[eval]' (or pip install lm-eval).")
    args = sys.argv[1:] if argv is None else argv
    if not any(a in ("-h", "--help") for a in args):  # help needs neither torch nor the model classes
        tasks, include = _flag(args, "--tasks"), _flag(args, "--include_path")
        if tasks:  # offline and a hub data set not cached: one line now, not datasets' retries and a traceback
            from softpick.analysis.cli import check_offline_tasks

            try:
                check_offline_tasks(tasks.split(","), include.split(",") if include else [])
            except ValueError as error:
                raise UserError(str(error).replace("--tasks-dir", "--include_path")) from None
        import softpick.models  # noqa: F401  (registers the model with the transformers Auto classes)
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
    return 0


def _flag(args: list[str], name: str) -> str | None:
    """The value of ``name VALUE`` or ``name=VALUE`` in ``args`` (the last one), or None."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


if __name__ == "__main__":
    sys.exit(main())
