#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): CUDA tests, the baseline trained 120 s and evaluated, a 2-trial study on
# the GPU, one JSON summary. Under 8 minutes on one H100/H200; on a CPU-only machine the GPU parts say skipped.
# Needs the set-up .venv (./scripts/setup.sh), or a Python with the package installed as PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
exec "$PYTHON" bench/gpu_check.py "$@"
