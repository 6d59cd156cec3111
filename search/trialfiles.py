"""What an engine trial (search/trial.py) and a script trial (search/script/trial.py) share: the names of the
files in a trial's folder, how they are written, where the trial ran, and the on_val callback that feeds its
validation reports to the study's pruner. Kept apart so that search.trial can hand a script trial to
search.script.trial without the two importing each other.
"""

import json
import os
import socket
import sys
import traceback

REQUEST_FILE = "request.json"
RESULT_FILE = "result.json"
REPORTS_FILE = "reports.jsonl"  # one [index, bpb] line per validation report, as it is made (Tune reads them live)
PLACEMENT_FILE = "placement.json"  # where the trial ran: host, Ray node, CUDA_VISIBLE_DEVICES, device


def _write_json(directory: str, name: str, data) -> None:
    path = os.path.join(directory, name)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(path + ".tmp", path)


def read_reports(directory: str) -> list[list]:
    """The validation reports a trial has made so far (a line still being written is left for the next read)."""
    try:
        with open(os.path.join(directory, REPORTS_FILE), encoding="utf-8") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines[:-1] if line]


def placement(device) -> dict:
    return {"host": socket.gethostname(), "node": os.environ.get("PGOLF_NODE") or socket.gethostname(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": str(device)}


def _reporter(request: dict):
    """on_val callback: report to the study and raise TrialPruned when its pruner says so (None: no pruning)."""
    from search.budget.fidelity import NONE, PARETO, PrunerSpec, pareto_reporter

    spec = PrunerSpec(**request["pruner"]) if request.get("pruner") else None
    if spec is None or spec.mechanism == NONE:
        return None
    import optuna

    from search.study import open_storage

    # The study's pruner is not stored with it: build the one the coordinator uses, from the same spec.
    study = optuna.load_study(study_name=request["study"], storage=open_storage(request["storage"]), pruner=spec.optuna_pruner())
    trial = optuna.trial.Trial(study, request["trial_id"])  # the trial the coordinator asked for, by its storage id
    if spec.mechanism == PARETO:
        return pareto_reporter(trial, spec)

    def on_val(index: int, bpb: float) -> None:
        trial.report(bpb, index)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at report {index} (val bpb {bpb:.4f})")

    return on_val


def fail_at_boundary(directory: str) -> int:
    """The trial process's boundary: any failure fails this trial only, its traceback kept in error.txt and one
    line on stderr; returns the exit status. Call from inside an `except Exception` block."""
    exc = sys.exc_info()[1]
    with open(os.path.join(directory, "error.txt"), "w", encoding="utf-8") as f:
        f.write(traceback.format_exc())
    print(f"trial failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1
