#!/usr/bin/env bash
# Sets everything up (if needed, with the test requirements) and runs the whole test suite with coverage of
# quark_jax, subprocesses included (.coveragerc); the report lists the lines each partly covered module misses.
# Extra arguments go to pytest (e.g. `--no-cov` to run without measuring).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
rm -rf .cache/coverage
mkdir -p .cache/coverage
exec "${VENV:-.venv}/bin/python" -m pytest --cov --cov-config=.coveragerc --cov-report=term-missing:skip-covered "$@"
