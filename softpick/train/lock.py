"""One run per dump folder: ``{dump_folder}/run.lock`` names the host and PID of the run using it.

The lock is an exclusive ``flock`` on that file, held for the life of the run. The kernel drops it
when the process dies (even by ``kill -9``), so a lock left by a dead run is taken over by the next
one, which logs whose it was. A second run on a folder in use stops with one line naming the holder.
A run that ends removes the file while it still holds the lock; a run that locked the file just
before it was removed sees that the path no longer names its file and opens it again, so two runs
never hold two different files.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path

from softpick.errors import UserError

logger = logging.getLogger("softpick.train")

LOCK_NAME = "run.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_writable(folder: Path, flag: str) -> None:
    """UserError naming ``flag`` unless ``folder`` exists (or can be made) and takes a file."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"0")
    except OSError as err:
        raise UserError(f"{flag} {str(folder)!r} is not writable ({err.strerror or err}); give a folder this user "
                        f"can write, on a disk with space.") from None


class DumpLock:
    """Holds ``{folder}/run.lock`` until :meth:`release`; raises UserError when another run holds it."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise UserError(f"job.dump_folder {str(folder)!r} is not writable ({err.strerror}); "
                                f"give a folder this user can write.") from None
            try:
                self._lock(fd)
            except BaseException:
                os.close(fd)
                raise
            if self._still_named(fd):
                break
            os.close(fd)  # the previous run removed the file between our open and lock: open the new one
        try:
            previous = self._read(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if previous.get("pid") is not None:
            logger.warning("took over the lock %s of a run that is gone (host %s, pid %s)", self.path,
                           previous.get("host"), previous.get("pid"))

    def _lock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = self._read(fd)
        except OSError as err:  # a file system without flock: fall back to the PID in the file
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            holder = self._read(fd)
            if not holder or (holder.get("host") == socket.gethostname() and not _pid_alive(holder["pid"])):
                return
        raise UserError(
            f"job.dump_folder {str(self.path.parent)!r} is in use by another run (host {holder.get('host', '?')}, "
            f"pid {holder.get('pid', '?')}, since {holder.get('started', '?')}); wait for it, stop it, or give "
            f"another --job.dump_folder."
        )

    def _still_named(self, fd: int) -> bool:
        """True when ``self.path`` is still the file open as ``fd`` (not removed or replaced)."""
        try:
            here, there = os.fstat(fd), os.stat(self.path)
        except FileNotFoundError:
            return False
        return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def release(self) -> None:
        """Remove the file, then drop the lock (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if self._still_named(fd):
                    self.path.unlink()
            except OSError:
                os.ftruncate(fd, 0)  # cannot remove it: leave it empty, as a free lock
            finally:
                os.close(fd)
