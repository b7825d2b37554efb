#!/usr/bin/env bash
# Creates .venv (if missing or stale) and installs quark_jax with its pinned, test-verified dependencies.
# Re-running is cheap: nothing is reinstalled unless a requirements file or setup.py changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
stamp="$VENV/.quark_installed"
inputs_hash="$(cat requirements.txt requirements-test.txt setup.py | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$inputs_hash" ]]; then
  exit 0
fi
echo "[setup] creating $VENV and installing pinned requirements (a few minutes on a fresh machine)"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r requirements-test.txt
"$VENV/bin/python" -m pip install --quiet --no-deps -e .
echo "$inputs_hash" > "$stamp"
echo "[setup] done: $("$VENV/bin/python" -c 'import jax, flax; print(f"jax {jax.__version__}, flax {flax.__version__}")')"
