#!/usr/bin/env bash
# Set up a virtual environment and run the demo: the bundled lung CT registered to a
# simulated exhale of itself with the bundled model. Outputs go to demo-output/.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${PROGREG_DEMO_VENV:-.venv-demo}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# torch==2.13.0 first: the CPU build (pip finds it locally where a wheel cache has it) (an unpinned torch pulls CUDA).
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e .
"$VENV/bin/progreg" demo --out demo-output "$@"
