#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py) as shipped, on a bare GPU machine: a Python with torch, numpy, sentencepiece and
# pytest, no package index, the checkout and gpu_bundle/ in it (bench/gpu_prepare.sh fills it beforehand). Installs
# the bundle's wheels with no index into a virtualenv of its own that sees that Python's packages (torch stays the
# machine's), then runs the check: at most 7 minutes on one H200, one JSON. Without a GPU the GPU parts say skipped.
#     bench/gpu_check.sh [--official PATH/train_gpt.py] [--out FILE] [--parts a,b] ...   (bench/gpu_check.py --help)
# PYTHON picks the interpreter (default: python3); GPU_CHECK_VENV where the virtualenv goes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${GPU_CHECK_VENV:-${TMPDIR:-/tmp}/pgolf-gpu-check-venv}
[ -f gpu_bundle/requirements.txt ] || { echo "error: gpu_bundle/ is missing or incomplete: run bench/gpu_prepare.sh where the package index is reachable, and bring gpu_bundle/ along" >&2; exit 2; }
command -v "$PYTHON" >/dev/null || { echo "error: no $PYTHON here: set PYTHON to the interpreter that holds torch" >&2; exit 2; }
"$PYTHON" -m pip --version >/dev/null 2>&1 || { echo "error: $PYTHON has no pip to install gpu_bundle/wheels with" >&2; exit 2; }
for module in torch numpy sentencepiece pytest; do
    "$PYTHON" -c "import $module" 2>/dev/null || { echo "error: $PYTHON cannot import $module: set PYTHON to the interpreter that holds torch" >&2; exit 2; }
done
rm -rf "$VENV"
"$PYTHON" -m venv --system-site-packages --without-pip "$VENV"
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_path('purelib'))")
# --system-site-packages reaches the base interpreter's packages; where PYTHON is itself a virtualenv (the GPU
# machines' python3 is one), its own packages are named too.
"$PYTHON" -c "import site, sys; sys.prefix != sys.base_prefix and print('\n'.join(site.getsitepackages()))" > "$site/gpu-check-base.pth"
"$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --disable-pip-version-check \
    --find-links gpu_bundle/wheels --target "$site" -r gpu_bundle/requirements.txt
started=$(date +%s)
set +e
"$VENV/bin/python" bench/gpu_check.py "$@"
code=$?
echo "gpu_check.sh: $(( $(date +%s) - started )) s after the install" >&2
exit $code
