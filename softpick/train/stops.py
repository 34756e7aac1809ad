"""Expected ends of a run other than success, each one line on stderr with its own exit code.

============  ==========================================================================================
exit code     meaning
============  ==========================================================================================
0             the run finished
2             a user mistake (a flag, a file, a folder that does not fit): :class:`softpick.errors.UserError`
3             the loss or the gradient norm became NaN/Inf (:class:`NonFinite`); no checkpoint written
4             a checkpoint could not be written, e.g. the disk is full (:class:`CheckpointWriteError`)
75            stopped by SIGTERM or SIGINT at a step boundary (:class:`Interrupted`), after writing a
              checkpoint when checkpointing is on; rerun the same command to resume (75 = EX_TEMPFAIL)
============  ==========================================================================================

:class:`StopSignals` turns the first SIGTERM/SIGINT into a request that the training loop honours at
the end of the current step; a second signal acts as it normally would (Ctrl-C twice kills).
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path
from types import FrameType
from typing import TypeVar

from softpick.errors import UserError

E = TypeVar("E", bound=BaseException)


class RunStopped(UserError):
    """A run that ended early for a reason it reports in one line (no traceback)."""


class NonFinite(RunStopped):
    """The loss or gradient norm of a step is NaN/Inf (and skipping is off, or skipped too often)."""

    exit_code = 3


class CheckpointWriteError(RunStopped):
    """A checkpoint could not be written (no space left, quota, read-only file system, ...)."""

    exit_code = 4


class Interrupted(RunStopped):
    """SIGTERM or SIGINT arrived; the loop stopped after a whole step."""

    exit_code = 75


def mount_point(path: Path) -> Path:
    """The mount point holding ``path`` (the nearest existing ancestor that is a mount)."""
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def write_failure(error: OSError, folder: Path, step: int, kept: str) -> CheckpointWriteError:
    """The one-line error for an OSError while writing ``step-{step}`` in ``folder``; ``kept`` names the
    newest checkpoint that survives ("step-6" or "no earlier checkpoint")."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left" if error.errno == errno.ENOSPC else "disk quota exceeded"
        return CheckpointWriteError(
            f"{what} on {mount_point(folder)} while writing step-{step} in {folder}; {kept} is kept. "
            f"Free space (or set --checkpoint.keep_latest_k) and rerun the same command to resume."
        )
    return CheckpointWriteError(
        f"cannot write step-{step} in {folder}: {error.strerror or error} ({error.filename or folder}); "
        f"{kept} is kept."
    )


def find_cause(error: BaseException, kind: type[E]) -> E | None:
    """The ``kind`` error behind ``error``: itself, a cause or context, or one rank's failure that
    torch's ``CheckpointException`` wraps."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, kind):
            return e
        todo += [e.__cause__, e.__context__]
        for failure in (getattr(e, "failures", None) or {}).values():  # CheckpointException: rank -> error
            todo.append(failure[0] if isinstance(failure, tuple) else failure)
    return None


def find_os_error(error: BaseException) -> OSError | None:
    """The OSError behind ``error`` (:func:`find_cause`)."""
    return find_cause(error, OSError)


class StopSignals:
    """Context manager: while active, the first SIGTERM or SIGINT sets :attr:`received` instead of
    ending the process; the previous handlers come back on exit (and after the first signal, so a
    second one acts at once). Only the main thread can install handlers; elsewhere this does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> StopSignals:
        try:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread
            self._restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""
