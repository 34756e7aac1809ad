"""lm-eval's own command line with softpick's models registered.

    softpick lm-eval --model hf --model_args pretrained=DIR --tasks TASKS [...]
    python -m softpick.analysis.lm_eval_cli ...            (the same)

Every lm-eval flag works as with ``lm_eval``; the only difference is ``import softpick`` first, which
registers ``softpick_transformer`` with transformers' Auto classes, so ``AutoModelForCausalLM``
inside lm-eval can load our checkpoints.
"""

from __future__ import annotations

import sys

import softpick  # noqa: F401  (registers the model with the transformers Auto classes)
from softpick.analysis.evaluation import require_lm_eval


def main(argv: list[str] | None = None) -> int:
    require_lm_eval()
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
