#!/usr/bin/env bash
# Sets everything up (if needed, with the test requirements) and runs the whole test suite. Extra arguments go
# to pytest (e.g. `-k resume`).
#
# QUARK_COVERAGE=1 also measures coverage of quark_jax, subprocesses included (.coveragerc); the report lists
# the lines each partly covered module misses. It is off by default (and in CI): tracing every line of the
# many `quark` subprocesses costs about a quarter of the suite's time on the 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
coverage=()
if [[ "${QUARK_COVERAGE:-0}" == "1" ]]; then
  rm -rf .cache/coverage
  mkdir -p .cache/coverage
  coverage=(--cov --cov-config=.coveragerc --cov-report=term-missing:skip-covered)
fi
# Two workers by default (QUARK_TEST_WORKERS=0 runs in one process); a test file stays on one worker, so its
# module fixtures are built once.
workers="${QUARK_TEST_WORKERS:-2}"
exec "${VENV:-.venv}/bin/python" -m pytest -n "$workers" --dist loadfile "${coverage[@]}" "$@"
