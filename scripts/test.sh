#!/usr/bin/env bash
# The test command: set up (if needed), then run the whole suite on the real data in ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# CI runs this as it is: every test but the long end-to-end ones marked slow (CI must stay under 20 minutes on 2
# cores). `./scripts/test.sh --all` runs those too; other arguments go to pytest.
marks=(-m "not slow")
if [ "${1:-}" = "--all" ]; then marks=(); shift; fi
exec .venv/bin/python -m pytest -q --durations=15 "${marks[@]}" "$@"  # the slowest tests listed
