#!/usr/bin/env bash
# The main job: set up (if needed), then run the demo study on the real FineWeb sample in ../shared/data, or
# where that is absent on the demo's data cut once from the official shards (pgolf/demo_data.py; PGOLF_DATA
# overrides both) (about 10 minutes on 2 CPU cores), then write its Pareto page and report. Extra arguments go
# to `search run`.
set -euo pipefail
cd "$(dirname "$0")/.."
PGOLF_SKIP_BROWSER=1 PGOLF_SKIP_POSTGRES=1 ./scripts/setup.sh  # the demo needs neither (the tests do)
study="${STUDY:-demo-$(date +%Y%m%d-%H%M%S)}"  # STUDY=name to choose it
.venv/bin/search run --study "$study" "$@"
.venv/bin/search status "$study"
.venv/bin/search pareto "$study"
.venv/bin/search report "$study"
# The same study in Optuna's own viewer, which serves it until Ctrl-C:
storage=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["storage"])' "${PGOLF_RESULTS:-results}/$study/study.json")
echo "to browse it in optuna-dashboard: .venv/bin/optuna-dashboard $storage"
