#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install d2_anchorfree into it.
#   D2AF_VENV   where the environment lives (default: ~/.cache/d2af/venv, outside the clone so
#               that CI and later checkouts reuse it). Rebuilt when requirements.txt changes.
# Steps: venv -> pinned requirements -> pinned extras (requirements-extra.txt)
#        -> detectron2 v0.6 Python sources (tools/install_detectron2.py)
#        -> editable install of this checkout (no deps; pyproject.toml, setuptools >= 64, which gives
#        the d2af command). Idempotent; prints the venv path last.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${D2AF_VENV:-$HOME/.cache/d2af/venv}"
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11, 4))' || {
  echo "[setup_env] need Python >= 3.11.4 (the pinned numpy/scipy and tarfile filters); set PYTHON=..." >&2; exit 1; }
STAMP="$VENV/.d2af-requirements.sha256"
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "[setup_env] creating $VENV (torch CUDA build is about 5 GB, a few minutes)" >&2
  "$PYTHON" -m venv --clear "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "pip==25.0" wheel "setuptools>=64" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt >&2
  echo "$want" > "$STAMP"
fi
# Pinned extras (requirements-extra.txt): their own step and stamp, so that a change there
# reinstalls only them, not the whole environment.
EXTRA_STAMP="$VENV/.d2af-requirements-extra.sha256"
want_extra=$(sha256sum requirements-extra.txt | cut -d' ' -f1)
if [ "$(cat "$EXTRA_STAMP" 2>/dev/null)" != "$want_extra" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-extra.txt >&2
  echo "$want_extra" > "$EXTRA_STAMP"
fi
"$VENV/bin/python" tools/install_detectron2.py >&2
# An editable install from pyproject.toml alone (PEP 660) needs setuptools >= 64; an environment made
# before may hold an older one.
"$VENV/bin/python" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 64)' ||
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "setuptools>=64" >&2
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . >&2
echo "$VENV"
