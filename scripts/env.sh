# Sourced by scripts/demo.sh and scripts/test.sh; defines softpick_venv.

# softpick_venv [extras]: cd to the repository root, create or reuse ./.venv, activate it and install
# softpick (editable, with the given extras such as "test") when pyproject.toml or the lock file is newer
# than the last install. Every package is pinned by requirements/lock.txt (pip constraints), so a fresh
# machine installs exactly the versions the suite passed with.
softpick_venv() {
  local extras="${1:-}"
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
  fi
  . .venv/bin/activate
  local stamp=".venv/.softpick-installed${extras:+-$extras}"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements/lock.txt -nt "$stamp" ]; then
    echo "Installing softpick${extras:+[$extras]} into .venv (the first time takes a few minutes)..." >&2
    # torch first and pinned, so that installing softpick does not pull another (CUDA) build.
    python -m pip install --quiet --progress-bar off -c requirements/lock.txt "torch==2.13.0"
    python -m pip install --quiet --progress-bar off -c requirements/lock.txt -e ".${extras:+[$extras]}"
    touch "$stamp"
  fi
}
