#!/usr/bin/env bash
# Creates .venv and installs aiflow with its dev tools, once; reinstalls when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.aiflow-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  echo "aiflow: creating .venv" >&2
  "$PY" -m venv .venv
fi
echo "aiflow: installing packages into .venv (first run takes a few minutes)" >&2
.venv/bin/python -m pip install --quiet --upgrade pip
# torch is pinned in pyproject.toml to the CPU build available on these machines.
.venv/bin/python -m pip install --quiet -e '.[dev]'
echo "$want" > "$stamp"
