"""The one exception type for user mistakes, and how a command line reports it.

Raise :class:`UserError` with one sentence that names the bad value and the fix; ``softpick <command>``
prints it as one line on stderr and exits with :data:`USAGE_EXIT` (2). Anything else is a bug and keeps
its traceback. ``--debug`` (anywhere on the command line) or ``SOFTPICK_DEBUG=1`` shows the traceback of
a user error too.
"""

from __future__ import annotations

import os

USAGE_EXIT = 2


class UserError(Exception):
    """A mistake in what the user passed (a flag, a file, a folder): one line naming it and the fix."""


def debug_enabled(argv: list[str] | None = None) -> bool:
    """True when tracebacks of user errors are wanted: ``--debug`` in argv or ``SOFTPICK_DEBUG=1``."""
    return os.environ.get("SOFTPICK_DEBUG", "") not in ("", "0") or "--debug" in (argv or [])


def one_line(error: BaseException) -> str:
    """The error's message on one line (newlines folded), for stderr."""
    return " ".join(str(error).split()) or type(error).__name__
