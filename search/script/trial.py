"""A script trial, in its own process: the user's script run as it is (run.py) in the trial's folder, its
validation reports fed to the study's pruner, its bytes measured by pgolf, its metrics written as an
engine trial writes them (search/trial.py), so the coordinator, status, pages and export read both alike.

The trial folder gets request.json (from the coordinator), placement.json, train.log (the script's output),
reports.jsonl, the script's own files (its artifact among them), metrics.json and result.json (complete |
pruned). A failed run (non-zero exit, no final score, a non-finite one, no artifact, over time) leaves no
result.json: error.txt holds its one line and the log's tail, and the process's last output line is that one
line, which the coordinator records as the trial's reason.
"""

import json
import math
import os
import sys
import time

from search.script import ScriptError
from search.trialfiles import (PLACEMENT_FILE, REPORTS_FILE, REQUEST_FILE, RESULT_FILE, _reporter, _write_json, fail_at_boundary,
                               placement)

KIND = "script"  # request["kind"] of a script trial; engine trials have none


def is_script_trial(directory: str) -> bool:
    try:
        with open(os.path.join(directory, REQUEST_FILE), encoding="utf-8") as f:
            return json.load(f).get("kind") == KIND
    except (OSError, ValueError):
        return False


def code_bytes(script: str, counted: list[str], form: str) -> int:
    """The counted code: the files as they are, or their self-extracting form (built for real and measured)."""
    if form == "compressed":
        from pgolf.selfextract import build

        return build(script, counted).bytes_compressed
    return sum(os.path.getsize(p) for p in [script, *counted])


def file_sha256(path: str) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class ScriptTrialFailed(Exception):
    def __init__(self, reason: str, tail: list[str]):
        super().__init__(reason)
        self.tail = tail


def _pruner_callback(request: dict, directory: str, reports: list, pruned: list):
    """on_report(progress) for run_script: the report goes to reports.jsonl and to the study's pruner (the one
    engine trials use: search/trialfiles.py), True when the pruner stops the trial."""
    import optuna

    on_val = _reporter(request)
    every = request["script"]["report_every_seconds"]

    def on_report(progress) -> bool:
        # Report k is at the k-th bucket of `every` training seconds (equal training time across trials), or
        # the k-th report when the space gives no interval.
        if every > 0:
            if progress.train_seconds is None:
                return False
            index = int(progress.train_seconds // every)
            if index < 1 or (reports and index <= reports[-1][0]):
                return False
        else:
            index = len(reports) + 1
        reports.append([index, progress.val_bpb])
        with open(os.path.join(directory, REPORTS_FILE), "a", encoding="utf-8") as f:
            f.write(json.dumps(reports[-1]) + "\n")
        if on_val is None:
            return False
        try:
            on_val(index, progress.val_bpb)
        except optuna.TrialPruned as exc:
            pruned.append(str(exc))
            return True
        return False

    return on_report


def rank_threads(ranks: int) -> dict:
    """The CPU threads of each of the script's ranks: the trial's share (PGOLF_THREADS, set by the backend) split
    among them, so that N ranks on a CPU do not each take the whole share (torchrun keeps an OMP_NUM_THREADS it is given;
    one the space fixes in [script.env] wins)."""
    threads = int(os.environ.get("PGOLF_THREADS") or 0)
    return {"OMP_NUM_THREADS": str(max(1, threads // ranks))} if threads and ranks > 1 else {}


def run_script_trial(directory: str) -> dict:
    from search.script.run import run_script

    entered = time.time()
    with open(os.path.join(directory, REQUEST_FILE), encoding="utf-8") as f:
        request = json.load(f)
    spec = request["script"]
    _write_json(directory, PLACEMENT_FILE, placement(f"script ({spec['ranks']} rank{'s' if spec['ranks'] > 1 else ''})"))
    reports, pruned = [], []
    run = run_script(spec["command"], directory, {**rank_threads(spec["ranks"]), **spec["env"]}, os.path.join(directory, "train.log"),
                     final_tag=spec["final_tag"] or None, artifact_glob=spec["artifact"], time_limit=spec["time_limit"],
                     on_report=_pruner_callback(request, directory, reports, pruned))
    if run.outcome == "pruned":
        result = {"status": "pruned", "reports": reports, "reason": pruned[0] if pruned else run.reason}
        _write_json(directory, RESULT_FILE, result)
        return result
    if run.outcome != "completed":
        raise ScriptTrialFailed(run.reason, run.tail)
    summary = run.summary
    code = code_bytes(spec["path"], spec["counted"], spec["code"])
    # Seconds the log does not give are charged whole: the run's wall time for training, the rest for evaluation.
    train = summary.train_seconds if summary.train_seconds is not None else run.wall_seconds
    evaluation = summary.eval_seconds if summary.eval_seconds is not None else max(run.wall_seconds - train, 0.0)
    steps = summary.steps
    metrics = {"kind": KIND, "val_bpb_post": summary.score(), "val_loss_post": summary.final.val_loss,
               "artifact_bytes": code + run.artifact_bytes, "code_bytes": code, "model_bytes": run.artifact_bytes,
               "bytes_by_group": {"code": code, "model": run.artifact_bytes}, "code_form": spec["code"],
               "artifact_file": os.path.relpath(run.artifact, directory),
               "train_seconds": train, "eval_seconds": evaluation, "steps": steps,
               "ms_per_step": 1000 * train / steps if steps else None, "stopped_by": "wallclock" if summary.stopped_early else "iterations",
               "reports": reports, "final_line": summary.final.text.strip(), "script_reported_bytes": summary.reported_total_bytes,
               "script_values": spec["values"], "script_env": spec["env"], "seed": spec.get("seed"),
               "script_sha256": file_sha256(spec["path"]),
               "trial_seconds": time.time() - entered}
    if not math.isfinite(metrics["val_bpb_post"]):  # score() refuses these; kept as a guard for the ranking
        raise ScriptTrialFailed(f"the script's final score is {metrics['val_bpb_post']}", run.tail)
    from pgolf.metrics import METRICS_FILE

    _write_json(directory, METRICS_FILE, metrics)
    result = {"status": "complete", "metrics": metrics}
    _write_json(directory, RESULT_FILE, result)
    return result


def script_trial_main(directory: str) -> int:
    """The trial process's entry for a script trial: 0 with result.json written, else 1 with the reason."""
    try:
        run_script_trial(directory)
    except (ScriptTrialFailed, ScriptError) as exc:
        tail = getattr(exc, "tail", [])
        with open(os.path.join(directory, "error.txt"), "w", encoding="utf-8") as f:
            f.write(f"{exc}\n\nlast lines of train.log:\n" + "\n".join(tail) + "\n")
        print(f"{exc} (train.log's last line: {tail[-1][:160] if tail else '-'})", file=sys.stderr)
        return 1
    except Exception:  # the process boundary: any failure fails this trial, with its reason kept
        return fail_at_boundary(directory)
    return 0
