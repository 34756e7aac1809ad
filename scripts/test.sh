#!/usr/bin/env bash
# Install softpick with its test extra into ./.venv if needed, then run the whole test suite from the
# repository root. Extra flags go to pytest; the exit status is pytest's.
set -euo pipefail
. "$(dirname "$0")/env.sh"
softpick_venv test
exec python -m pytest -q "$@"
