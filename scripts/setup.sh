#!/usr/bin/env bash
# Create .venv with the CPU build of torch 2.13.0 (installed first, pinned: an unpinned torch
# resolves to a multi-GB CUDA build) and readtalk in editable mode with its dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.11 python3.12 python3.13 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PY=$c; break
    fi
  done
fi
[ -n "$PY" ] || { echo "error: readtalk needs Python 3.11 or newer" >&2; exit 2; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
# real speech for the tests (pyannote-audio ships a 30-s English sample; its code is not used)
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps pyannote-audio==4.0.7
touch .venv/.readtalk-installed
