"""Helpers of the hostile suite: run a command as ``softpick <command>`` does, and prove nothing changed.

:func:`tree_hashes` snapshots every file under a folder (sha256 of its bytes); :func:`refused` runs a
command in this process through :func:`softpick.cli.main` and checks the promise of docs/faults.md:
the exit code, exactly one ``softpick <command>: ...`` line on stderr, no traceback, and every file
that existed before byte-identical afterwards (no file added either, unless allowed).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from softpick.cli import main as softpick


def tree_hashes(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (a file root: its own hash under '.')."""
    root = Path(root)
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(("softpick ", "softpick:"))]


def run(capsys, argv: list[str]) -> tuple[int, list[str], str]:
    """(exit code, the ``softpick ...`` lines on stderr, all of stderr) of ``softpick ARGV``."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    capsys.readouterr()
    try:
        code = softpick([str(a) for a in argv])
    except SystemExit as stop:  # argparse: usage, then one "softpick <command>: error: ..." line
        code = stop.code
    finally:  # a handler logging.basicConfig bound to this test's captured stderr must not outlive it
        root.handlers[:] = handlers
    err = capsys.readouterr().err
    return code, error_lines(err), err


def refused(capsys, argv: list[str], code: int, *words: str, keep: tuple[Path, ...] = (),
            new_ok: tuple[str, ...] = ()) -> str:
    """Run ``softpick ARGV``; assert exit ``code``, one error line holding every one of ``words``, no
    traceback, and every file under each of ``keep`` unchanged (new files only if their name is in
    ``new_ok``). Returns the line."""
    before = {k: tree_hashes(k) for k in keep}
    got, lines, err = run(capsys, argv)
    assert "Traceback" not in err, err[-3000:]
    assert got == code, (got, err[-3000:])
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], (word, lines[0])
    for k in keep:
        after = tree_hashes(k)
        assert {n: h for n, h in after.items() if n in before[k]} == before[k], f"files under {k} changed"
        added = [n for n in after if n not in before[k] and Path(n).name not in new_ok]
        assert not added, f"files added under {k}: {added}"
    return lines[0]
