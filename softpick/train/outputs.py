"""Output folders: a command never deletes or overwrites what it did not write, unless asked.

Every command that writes a folder (``convert``'s ``--out`` and ``--checkpoint``, the trainer's HF
exports) checks the target first with :func:`check_output`, before any work:

- a missing or empty folder is written;
- a folder that holds a training run or a checkpoint (``run.lock``, ``metrics.jsonl``, ``.metadata``,
  ``manifest.json`` or ``step-N`` folders, at any depth) is never replaced, ``--overwrite`` or not;
- a folder that contains one of the command's inputs is never replaced;
- any other folder with files is replaced only with ``--overwrite`` (or when it is the command's own
  default output and holds a model export).

The folder is written beside the target (a hidden ``.NAME.partial-PID`` sibling) and put in place by
:func:`replace_folder`: the old folder is renamed away first and removed only once the new one is in
place, so a failure at any point leaves either the old folder or the new one.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from softpick.errors import UserError

RUN_FILES = ("run.lock", "metrics.jsonl", ".metadata", "manifest.json")
"""Files that mark a training run's dump folder or a checkpoint folder."""

STEP_NAME = re.compile(r"^step-\d+(\.tmp)?$")

SCAN_LIMIT = 10_000
"""Entries looked at under a folder before it counts as too large to be a model folder."""


def run_marker(folder: Path) -> str | None:
    """The first file or folder under ``folder`` that belongs to a training run or a checkpoint (a path
    relative to it), None when there is none. UserError when the folder holds more than SCAN_LIMIT
    entries (no model folder does: it is not replaced)."""
    seen = 0
    for root, dirs, files in os.walk(folder):
        seen += len(dirs) + len(files)
        if seen > SCAN_LIMIT:
            raise UserError(f"{folder} holds more than {SCAN_LIMIT} files: it is not a model folder and is never "
                            f"replaced; give a new folder.")
        for name in [*files, *dirs]:
            if name in RUN_FILES or (name in dirs and STEP_NAME.match(name)):
                return os.path.relpath(os.path.join(root, name), folder)
    return None


def _inside(path: Path, folder: Path) -> bool:
    path, folder = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return path == folder or folder in path.parents


def check_output(out: str | Path, flag: str, *, overwrite: bool = False, inputs: tuple[str | Path, ...] = (),
                 own: bool = False) -> Path:
    """``out`` as a Path when a command may write it there; UserError (one line, naming ``flag``) otherwise.

    Args:
        out: the folder the command will (re)write.
        flag: the option that named it, for the message (``--out``).
        overwrite: the user passed ``--overwrite``.
        inputs: files or folders the command reads; ``out`` may not contain any of them.
        own: ``out`` is the command's default output; an earlier model export there is replaced.
    """
    out = Path(out)
    for parent in Path(os.path.abspath(out)).parents:
        if (parent / ".metadata").is_file() or (parent / "manifest.json").is_file():
            raise UserError(f"{flag} {str(out)!r} lies inside the checkpoint {parent}: a checkpoint is never "
                            f"written into; give another {flag}.")
    for item in inputs:
        if _inside(item, out):
            raise UserError(f"{flag} {str(out)!r} holds the input {str(item)!r}: writing there would delete it; "
                            f"give another {flag}.")
    if not out.exists():
        if out.is_symlink():
            raise UserError(f"{flag} {str(out)!r} is a broken symbolic link; give another {flag}.")
        return out
    if not out.is_dir():
        raise UserError(f"{flag} {str(out)!r} is a file, not a folder; give another {flag}.")
    if not any(out.iterdir()):
        return out
    marker = run_marker(out)
    if marker is not None:
        raise UserError(f"{flag} {str(out)!r} holds a training run or checkpoint ({marker}): it is never "
                        f"replaced; give another {flag}.")
    if overwrite or (own and (out / "config.json").is_file()):
        return out
    raise UserError(f"{flag} {str(out)!r} exists and is not empty; pass --overwrite to replace it, or give "
                    f"another {flag}.")


def partial_path(out: Path) -> Path:
    """The hidden sibling a folder is written to before :func:`replace_folder` moves it to ``out``."""
    return out.parent / f".{out.name}.partial-{os.getpid()}"


def replace_folder(new: Path, out: Path) -> Path:
    """Put the finished folder ``new`` at ``out`` (a sibling of it); an old ``out`` is renamed away first
    and deleted only after ``new`` is in place. Returns ``out``."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    return out


def remove_partial(path: Path) -> None:
    """Remove a partial folder (and the ``.tmp`` sibling save_pretrained's writer uses) after a failure."""
    for p in (path, path.with_name(path.name + ".tmp")):
        shutil.rmtree(p, ignore_errors=True)
