#!/usr/bin/env bash
# Refresh requirements/lock.txt: install softpick[test] into a fresh ./.venv-lock with the newest versions
# pyproject.toml allows (torch 2.13.0, the CPU build, first), run the whole suite there, and write the
# lock only if it passes. Then widen softpick/_compat.CHECKED if a library's minor version moved.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .venv-lock
"${PYTHON:-python3}" -m venv .venv-lock
. .venv-lock/bin/activate
python -m pip install --quiet --progress-bar off "torch==2.13.0"
python -m pip install --quiet --progress-bar off -e ".[test]"
python -m pytest -q "$@"
{
  sed -n '/^#/p' requirements/lock.txt
  python -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$/torch==\1/'
} > requirements/lock.txt.new
mv requirements/lock.txt.new requirements/lock.txt
echo "requirements/lock.txt refreshed; commit it with the suite's result." >&2
