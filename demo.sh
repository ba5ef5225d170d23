#!/usr/bin/env bash
# Set up a virtual environment and run the demo: the bundled lung CT registered to a
# simulated exhale of itself with the bundled model. Outputs go to demo-output/.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${PROGREG_DEMO_VENV:-.venv-demo}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# pip runs only when the environment is not current (new, pyproject.toml changed, or this folder
# moved): it takes half a minute even with nothing to install.
STAMP="$VENV/.progreg-installed"
WANTED="torch==2.13.0 $(sha256sum pyproject.toml | cut -d' ' -f1) $(pwd)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANTED" ] || ! "$VENV/bin/progreg" --version >/dev/null 2>&1; then
  # torch==2.13.0 first: the CPU build (pip finds it locally where a wheel cache has it) (an unpinned torch pulls CUDA).
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e .
  echo "$WANTED" > "$STAMP"
fi
"$VENV/bin/progreg" demo --out demo-output "$@"
