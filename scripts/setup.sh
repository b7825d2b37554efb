#!/usr/bin/env bash
# Creates .venv (if missing or stale) and installs quark_jax with its pinned dependencies.
#
#   bash scripts/setup.sh runtime   # requirements.txt only: what `quark` needs (scripts/demo.sh)
#   bash scripts/setup.sh test      # requirements-test.txt: the above plus pytest, pytest-cov, torch and
#                                   # transformers for the Hugging Face parity tests (scripts/test.sh; default)
#
# Re-running is cheap: each set has its own stamp (a hash of the requirement files and setup.py), and nothing is
# reinstalled unless one of those changed. A test install also satisfies the runtime stamp.
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT="${1:-${QUARK_REQUIREMENTS:-test}}"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
runtime_hash="$(cat requirements.txt setup.py | sha256sum | cut -d' ' -f1)"
test_hash="$(cat requirements.txt requirements-test.txt setup.py | sha256sum | cut -d' ' -f1)"
case "$WHAT" in
  runtime) requirements=requirements.txt; stamp="$VENV/.quark_installed.runtime"; hash="$runtime_hash" ;;
  test) requirements=requirements-test.txt; stamp="$VENV/.quark_installed.test"; hash="$test_hash" ;;
  *) echo "usage: bash scripts/setup.sh [runtime|test]  (got '$WHAT')" >&2; exit 2 ;;
esac
if [[ -f "$stamp" && "$(cat "$stamp")" == "$hash" ]]; then
  exit 0
fi
echo "[setup] creating $VENV and installing $requirements (a few minutes on a fresh machine)"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r "$requirements"
"$VENV/bin/python" -m pip install --quiet --no-deps -e .
echo "$hash" > "$stamp"
if [[ "$WHAT" == test ]]; then
  echo "$runtime_hash" > "$VENV/.quark_installed.runtime"  # requirements-test.txt includes requirements.txt
fi
echo "[setup] done ($WHAT): $("$VENV/bin/python" -c 'import jax, flax; print(f"jax {jax.__version__}, flax {flax.__version__}")')"
