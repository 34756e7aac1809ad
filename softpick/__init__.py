"""softpick: train, run and study language models whose attention uses softpick instead of softmax.

``import softpick`` registers ``SoftpickConfig`` / ``SoftpickForCausalLM`` with the transformers Auto
classes (model_type ``softpick_transformer``).

One exception keeps the ``softpick`` command quick: when this process is the ``softpick`` console script
(or ``python -m softpick``) asked only for help or the version (``softpick -h``, ``softpick --version``,
``softpick train -h``), torch and transformers are not loaded up front; the public names below still load
on first use.
"""

from __future__ import annotations

import os
import sys

__version__ = "0.1.0"

_PUBLIC = {
    "DEFAULT_EPS": "softpick.ops", "softmax_attention": "softpick.ops", "softpick": "softpick.ops",
    "softpick_attention": "softpick.ops", "SoftpickConfig": "softpick.models", "SoftpickForCausalLM": "softpick.models",
}

HELP_FLAGS = ("-h", "--help", "--version")


def help_only(argv: list[str]) -> bool:
    """Whether ``argv`` is the ``softpick`` command (or ``python -m softpick...``) asking only for help or the version.

    ``python -m`` sets ``sys.argv[0]`` to ``"-m"`` while it imports the packages of the module it runs, so
    that case is this package being located for ``python -m softpick ...`` itself.
    """
    if not argv or (os.path.basename(argv[0]) != "softpick" and argv[0] != "-m"):
        return False
    rest = argv[1:]
    return not rest or rest[0] in HELP_FLAGS or any(a in ("-h", "--help") for a in rest[1:])


def _load() -> None:
    from softpick import _quiet

    _quiet.install()
    from softpick._compat import check_versions

    check_versions()
    import softpick.models  # noqa: F401  (registers the Auto classes)


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        _load()
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'softpick' has no attribute {name!r}")


if not help_only(sys.argv):
    try:
        _load()
        from softpick.ops import DEFAULT_EPS, softmax_attention, softpick, softpick_attention  # noqa: E402
        from softpick.models import SoftpickConfig, SoftpickForCausalLM  # noqa: E402
    except KeyboardInterrupt:  # Ctrl-C while torch and transformers load: a command line, not a traceback
        if not sys.argv or os.path.basename(sys.argv[0]) not in ("softpick", "-m"):
            raise
        print("softpick: interrupted (SIGINT) while starting; nothing was done.", file=sys.stderr)
        raise SystemExit(130) from None

__all__ = ["DEFAULT_EPS", "SoftpickConfig", "SoftpickForCausalLM", "__version__", "softmax_attention", "softpick",
           "softpick_attention"]
