"""The one exception type for user mistakes, and how a command line reports it.

Raise :class:`UserError` with one sentence that names the bad value and the fix; ``softpick <command>``
prints it as one line on stderr and exits with its ``exit_code`` (:data:`USAGE_EXIT`, 2). Subclasses
for other expected ends of a run (a diverged loss, a full disk, a signal; see
``softpick.train.stops``) keep the one line and set their own ``exit_code``. Anything else is a bug
and keeps its traceback. ``--debug`` (anywhere on the command line) or ``SOFTPICK_DEBUG=1`` shows the
traceback of a user error too.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

USAGE_EXIT = 2
INTERRUPT_EXIT = 130
"""Exit code of a command stopped by Ctrl-C outside a training loop (128 + SIGINT, as a shell reports it)."""


class UserError(Exception):
    """A mistake in what the user passed (a flag, a file, a folder): one line naming it and the fix."""

    exit_code: int = USAGE_EXIT


def debug_enabled(argv: list[str] | None = None) -> bool:
    """True when tracebacks of user errors are wanted: ``--debug`` in argv or ``SOFTPICK_DEBUG=1``."""
    return os.environ.get("SOFTPICK_DEBUG", "") not in ("", "0") or "--debug" in (argv or [])


def one_line(error: BaseException) -> str:
    """The error's message on one line (newlines folded), for stderr."""
    return " ".join(str(error).split()) or type(error).__name__


def run_command(name: str, func: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """Run ``func(argv)`` (``--debug`` removed) as ``softpick <name>``: a :class:`UserError` becomes one
    line on stderr and its exit code; with ``--debug`` it keeps its traceback. ``--debug`` also sets
    ``SOFTPICK_DEBUG=1`` so an entry point that reports errors itself (``softpick train``) sees it."""
    debug = debug_enabled(argv)
    if debug:
        os.environ["SOFTPICK_DEBUG"] = "1"
    try:
        return int(func([a for a in argv if a != "--debug"]) or 0)
    except UserError as error:
        if debug:
            raise
        print(f"softpick {name}: {one_line(error)}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:  # Ctrl-C: no traceback of whatever was importing or loading
        if debug:
            raise
        print(f"softpick {name}: interrupted (SIGINT).", file=sys.stderr)
        return INTERRUPT_EXIT


EXIT_FILE_ENV = "SOFTPICK_EXIT_FILE"
"""Set by train.sh's launcher (softpick.train.launch): where a worker leaves its exit code and one line."""


def record_for_launcher(line: str, code: int) -> None:
    """Tell a torchrun launcher how this worker ended: no-op outside torchrun / train.sh.

    Writes torch elastic's per-worker error file (``TORCHELASTIC_ERROR_FILE``, the JSON that ``@record``
    writes) so that torchrun's failure summary shows ``line`` instead of a link, and, when train.sh's launcher
    set ``SOFTPICK_EXIT_FILE``, "code\\nline\\n" there (the first worker to end wins) so that train.sh
    exits with ``code`` and prints ``line`` last.
    """
    import json
    import time

    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        message = {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}
        try:
            with open(error_file, "w", encoding="utf-8") as fp:
                json.dump({"message": message}, fp)
        except OSError:
            pass
    exit_file = os.environ.get(EXIT_FILE_ENV)
    if exit_file:
        try:
            fd = os.open(exit_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError:  # another worker was first, or the folder is gone
            return
        with os.fdopen(fd, "w", encoding="utf-8") as fp:
            fp.write(f"{code}\n{line}\n")
