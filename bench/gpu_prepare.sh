#!/usr/bin/env bash
# Prepares gpu_bundle/ for bench/gpu_check.sh on a bare GPU machine (a Python 3.12 with torch, numpy, sentencepiece and
# pytest; no package index; no ../shared beside the checkout). Run it here, where the package index is reachable:
#   - the wheels of what the check needs and such a machine lacks (zstandard: the engine's compressor), built for
#     CPython 3.12 on manylinux x86_64, and for each further --python X.Y (3.11: the CPU test of the check here);
#   - the data slice (bench/gpu_bundle.py): the sp1024 tokenizer and sample shards from PGOLF_DATA (../shared/data),
#     and sp8192 ones built by pgolf from its sample documents.
# gpu_bundle/ is git-ignored; the device tool's `carry` takes it. The bundle and the checkout must weigh under the
# tool's 64 MiB together: measured at the end (gpu_bundle/manifest.json), a non-zero exit over it.
# --official PATH copies your copy of the official train_gpt.py into gpu_bundle/official/ (it is never shipped): the
# check then times its baseline step on the same GPU.
#     bench/gpu_prepare.sh [--python 3.11 ...] [--official PATH/train_gpt.py]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
SOURCE=${PGOLF_DATA:-../shared/data}
versions=(3.12)
official=""
while [ $# -gt 0 ]; do
    case "$1" in
        --python) [ $# -ge 2 ] || { echo "error: --python needs a version (e.g. 3.11)" >&2; exit 2; }
                  [[ "$2" =~ ^3\.[0-9]+$ ]] || { echo "error: --python $2 is not a Python version like 3.11" >&2; exit 2; }
                  versions+=("$2"); shift 2 ;;
        --official) [ $# -ge 2 ] && [ -f "$2" ] || { echo "error: --official needs the path of an existing train_gpt.py" >&2; exit 2; }
                    official=$2; shift 2 ;;
        *) echo "error: unknown argument $1 (usage: bench/gpu_prepare.sh [--python X.Y ...] [--official PATH])" >&2; exit 2 ;;
    esac
done
[ -x "$PYTHON" ] || { echo "error: $PYTHON not found: run ./scripts/setup.sh first, or set PYTHON" >&2; exit 2; }
[ -d "$SOURCE" ] || { echo "error: the data $SOURCE does not exist: set PGOLF_DATA to ../shared/data's layout" >&2; exit 2; }
# The versions the project runs with here: the ones its tests passed with.
requirements=$("$PYTHON" -c "import importlib.metadata as m; print(f'zstandard=={m.version(\"zstandard\")}')")
staging=$(mktemp -d gpu_bundle.staging.XXXXXX)
trap 'rm -rf "$staging"' EXIT
echo "$requirements" > "$staging/requirements.txt"
for version in "${versions[@]}"; do
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp --python-version "$version" \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$staging/wheels" $requirements \
        || { echo "error: pip could not download $requirements for Python $version: is the package index reachable?" >&2; exit 1; }
done
"$PYTHON" bench/gpu_bundle.py data "$SOURCE" "$staging/data"
if [ -n "$official" ]; then mkdir -p "$staging/official" && cp "$official" "$staging/official/train_gpt.py"; fi
rm -rf gpu_bundle
mv "$staging" gpu_bundle
trap - EXIT
"$PYTHON" bench/gpu_bundle.py manifest gpu_bundle
