#!/usr/bin/env bash
# Create a virtual environment, install the core with its test extras, run ruff and pytest.
# Usage: bash Testing/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PROGREG_TEST_VENV:-.venv-test}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# torch==2.13.0 first: the CPU build (pip finds it locally where a wheel cache has it) (an unpinned torch pulls CUDA).
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
# Headless Chromium renders the quality report in the tests (Debian's package, where apt-get runs as root;
# elsewhere those tests skip and say why).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "Testing/run.sh: chromium could not be installed; the report's browser tests will skip" >&2
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
"$VENV/bin/python" -m pytest "$@"
