"""``train.sh``'s launcher: torchrun in this process, ending with the workers' exit code and one line.

torchrun exits 1 whatever its workers returned, after a Python traceback of its ``ChildFailedError``
and a failure summary. ``python -m softpick.train.launch [torchrun options] -m softpick.train.trainer
...`` runs torchrun's own ``main`` and, when the workers fail, exits with the code of the first worker
that ended (docs/faults.md: 2 a user mistake, 3 NaN/Inf, 4 a checkpoint write, 75 stopped by a signal)
and prints its one-line error last, without torchrun's traceback. A worker that ended with a bug
(a traceback) gets torchrun's summary, traceback included (the trainer's ``@record``), and its exit
code. Each worker leaves its code and line in ``$SOFTPICK_EXIT_FILE`` (:func:`softpick.errors.
record_for_launcher`), a file this launcher creates and removes; it also covers a SIGTERM or Ctrl-C
to torchrun, after which torchrun itself reports no worker codes. train.sh ``exec``s this module, so
signals reach torchrun as before.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

from softpick.errors import EXIT_FILE_ENV


def _read_exit_file(path: Path) -> tuple[int, str] | None:
    """(exit code, one line) that the first worker to end left, or None."""
    try:
        code, line = path.read_text(encoding="utf-8").split("\n", 1)
        return int(code), line.strip()
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    """torchrun with ``argv``; returns 0, or the failed workers' exit code after their line on stderr."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    folder = Path(tempfile.mkdtemp(prefix="softpick-launch-"))
    exit_file = folder / "exit"
    previous = os.environ.get(EXIT_FILE_ENV)
    os.environ[EXIT_FILE_ENV] = str(exit_file)  # the workers inherit it
    try:
        torchrun(argv)
        return 0
    except ChildFailedError as failed:
        ended = _read_exit_file(exit_file)
        if ended is None:  # a bug, or a worker killed: torchrun's summary says which, with the traceback
            _, failure = failed.get_first_failure()
            print(failed.format_msg(), file=sys.stderr)
            return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
        code, line = ended
        print(line, file=sys.stderr)
        return code
    except SignalException as stopped:
        ended = _read_exit_file(exit_file)
        if ended is None:
            print(f"softpick train: torchrun stopped by {signal.Signals(stopped.sigval).name} before the workers "
                  f"reported.", file=sys.stderr)
            return 128 + int(stopped.sigval)
        code, line = ended
        print(line, file=sys.stderr)
        return code
    finally:
        exit_file.unlink(missing_ok=True)
        folder.rmdir()
        if previous is None:
            os.environ.pop(EXIT_FILE_ENV, None)
        else:
            os.environ[EXIT_FILE_ENV] = previous


if __name__ == "__main__":
    sys.exit(main())
