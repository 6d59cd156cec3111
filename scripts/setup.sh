#!/usr/bin/env bash
# Set up a fresh machine for pgolf: a virtualenv in .venv with torch, the package and its dev tools,
# and Debian's chromium for the page tests. Safe to run again (it only installs what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: on the project's machines this version's CPU build lies on disk, and the
# package's torch range is then already met (an unpinned torch would pull a multi-GB CUDA build).
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
if [ "${PGOLF_SKIP_BROWSER:-0}" != "1" ] && ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
    $SUDO apt-get update -q >/dev/null
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi
echo "setup done: $(.venv/bin/python -c 'import torch, optuna, ray; print("torch", torch.__version__, "optuna", optuna.__version__, "ray", ray.__version__)')"
