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
        import softpick.models  # noqa: F401  (registers the model with the transformers Auto classes)
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
