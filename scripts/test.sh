#!/usr/bin/env bash
# The test command: set up (if needed), then run the whole suite on the real data in ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m pytest -q --durations=15 "$@"  # the slowest tests listed: CI must stay under 20 min
