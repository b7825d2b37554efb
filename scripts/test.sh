#!/usr/bin/env bash
# Sets everything up (if needed, with the test requirements) and runs the whole test suite with coverage of
# quark_jax, subprocesses included (.coveragerc); the report lists the lines each partly covered module misses.
# Extra arguments go to pytest (e.g. `--no-cov` to run without measuring).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
rm -rf .cache/coverage
mkdir -p .cache/coverage
# Two workers by default (QUARK_TEST_WORKERS=0 runs in one process); a test file stays on one worker, so its
# module fixtures are built once.
workers="${QUARK_TEST_WORKERS:-2}"
exec "${VENV:-.venv}/bin/python" -m pytest -n "$workers" --dist loadfile --cov --cov-config=.coveragerc --cov-report=term-missing:skip-covered "$@"
