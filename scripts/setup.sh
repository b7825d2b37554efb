#!/usr/bin/env bash
# Creates .venv (if missing or stale) and installs quark_jax with its pinned dependencies.
#
#   bash scripts/setup.sh runtime   # requirements.txt only: what `quark` needs (scripts/demo.sh)
#   bash scripts/setup.sh test      # requirements-test.txt: the above plus pytest, pytest-cov, torch and
#                                   # transformers for the Hugging Face parity tests (scripts/test.sh; default);
#                                   # also Chromium and chromedriver (apt, with sudo when not root) if missing
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

# The browser tests (tests/serving/test_chat_page.py) drive Debian's Chromium through chromedriver; the shared
# tuning study test (tests/tuning/test_postgres_storage.py) starts a throw-away PostgreSQL server. Checked on
# every test setup, before the stamp, so that a machine whose venv is ready still gets them; silent when present.
install_browser() {
  if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
      && compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    return 0
  fi
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "[setup] chromium and chromium-driver are needed for the browser tests, but this is not root and there" \
        "is no sudo: install them with 'apt-get install -y chromium chromium-driver' as root" >&2
      return 1
    fi
    sudo=(sudo)
  fi
  echo "[setup] installing chromium and chromium-driver (apt) for the browser tests"
  # `env` after sudo: sudo drops the caller's environment; ${sudo[@]+...}: an empty array under `set -u`.
  if ! { ${sudo[@]+"${sudo[@]}"} apt-get update -qq && ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive \
           apt-get install -y -qq chromium chromium-driver postgresql >/dev/null; }; then
    echo "[setup] could not install chromium, chromium-driver and postgresql with apt-get (browser and tuning tests)" >&2
    return 1
  fi
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "[setup] apt-get finished but chromium or chromedriver is still missing from PATH" >&2
    return 1
  fi
}
if [[ "$WHAT" == test ]]; then
  install_browser
fi

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
