"""One trial, in its own process: train -> intermediate reports (pruning) -> allocation -> files.

`python -m search.trial DIR` reads DIR/request.json (written by the coordinator) and writes into DIR
only: config.toml, train.log, checkpoint.pgolf, calibration.json, allocation.json, final_model.pgolf,
train_gpt.py, metrics.json, and last result.json (status complete | pruned | infeasible). A crash, OOM
or NaN leaves no result.json; the coordinator then fails this trial alone.
"""

import json
import os
import sys
import time
import traceback

from pgolf.checkpoint import CHECKPOINT_FILE, checkpoint_bytes
from pgolf.config import config_from_dict, config_to_dict
from pgolf.configfiles import config_to_toml
from pgolf.datasets import DataPaths
from pgolf.model import count_params
from pgolf.run import METRICS_FILE, RunLog
from pgolf.gptq import check_calibration
from pgolf.submission import score, setup_runtime, train_model

from objectives.bytes import measure_calibration
from search.allocation import FormatChoices, allocate, write_candidate
from space.spec import AllocationSpace, Caps

REQUEST_FILE = "request.json"
RESULT_FILE = "result.json"


def _write_json(directory: str, name: str, data) -> None:
    path = os.path.join(directory, name)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(path + ".tmp", path)


def _reporter(request: dict):
    """on_val callback: report to the study and raise TrialPruned when the pruner says so."""
    if not request.get("prune"):
        return None
    import optuna

    from search.study import make_pruner, open_storage

    # The study's pruner is not stored with it: load it with the same one the coordinator uses.
    study = optuna.load_study(study_name=request["study"], storage=open_storage(request["storage"]), pruner=make_pruner("bpb"))
    trial = optuna.trial.Trial(study, request["trial_id"])

    def on_val(index: int, bpb: float) -> None:
        trial.report(bpb, index)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at report {index} (val bpb {bpb:.4f})")

    return on_val


def run_trial(directory: str) -> dict:
    with open(os.path.join(directory, REQUEST_FILE), encoding="utf-8") as f:
        request = json.load(f)
    config = config_from_dict(request["config"])
    data = DataPaths(**request["data"])
    caps = Caps(**request["caps"])
    alloc_space = AllocationSpace(**request["allocation"])
    log = RunLog(os.path.join(directory, "train.log"), echo=False)
    runtime = setup_runtime(request.get("device"))
    log(f"trial {request['trial_number']} of {request['study']} on {runtime.device}: {data.describe()}")
    with open(os.path.join(directory, "config.toml"), "w", encoding="utf-8") as f:
        f.write(config_to_toml(config))
    reports = []
    on_val = _reporter(request)

    def validate(model):
        return score(model, config.resolved_eval(), data.val_pattern, data.tokenizer, runtime, limit=config.train.val_tokens).bpb

    def report(step, bpb):
        # Reports come every val_every_seconds of training: the k-th report of every trial is at the same
        # training time, which is what the pruner compares (step counts differ with model speed).
        reports.append((len(reports) + 1, bpb))
        if on_val is not None:
            on_val(len(reports), bpb)

    import optuna

    started = time.perf_counter()
    if FormatChoices.of(alloc_space).extended:  # the allocation calibrates after training: fail now, not then
        check_calibration(data.train_pattern, config.train.seq_len, config.quant.calib_tokens)
    try:
        model, trained = train_model(config, data.train_pattern, runtime, validate_fn=validate, on_val=report, log=log)
    except optuna.TrialPruned as exc:
        log(str(exc))
        result = {"status": "pruned", "reports": reports, "reason": str(exc)}
        _write_json(directory, RESULT_FILE, result)
        return result
    log(f"trained {trained.steps} steps in {trained.train_seconds:.1f}s ({trained.stopped_by})")
    with open(os.path.join(directory, CHECKPOINT_FILE), "wb") as f:
        f.write(checkpoint_bytes(model, config))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _write_json(directory, "calibration.json", measure_calibration(state, sorted(set(alloc_space.bits) | set(alloc_space.embedding_bits)), alloc_space.clip))
    pre = score(model, config.resolved_eval(), data.val_pattern, data.tokenizer, runtime)
    log(f"pre-quant val_bpb {pre.bpb:.6f}")
    allocation = allocate(model, config, alloc_space, caps, data, runtime, log=log,
                          seconds_per_token=pre.seconds / max(pre.tokens, 1) if config.eval.stride == 0 else None,
                          train_seconds=trained.train_seconds)
    _write_json(directory, "allocation.json", allocation.record())
    best = allocation.best or min(allocation.candidates, key=lambda c: c.artifact_bytes, default=None)
    metrics = {"val_bpb_pre": pre.bpb, "train_seconds": trained.train_seconds, "steps": trained.steps,
               "train_tokens": trained.train_tokens, "stopped_by": trained.stopped_by, "params": count_params(model),
               "reports": reports, "allocation_seconds": allocation.seconds, "trial_seconds": time.perf_counter() - started,
               "sampled_config": config_to_dict(config)}
    if best is None:
        result = {"status": "infeasible", "reason": "no allowed allocation fits the byte cap", "metrics": metrics}
        _write_json(directory, METRICS_FILE, metrics)
        _write_json(directory, RESULT_FILE, result)
        return result
    write_candidate(directory, best)
    # A submission calibrates and quantizes (GPTQ, AWQ) after training, on training data: training time.
    metrics["train_seconds"] = trained.train_seconds + best.post_training_seconds
    metrics.update(post_training_seconds=best.post_training_seconds, val_bpb_post=best.val_bpb, val_loss_post=best.val_loss, artifact_bytes=best.artifact_bytes, model_bytes=len(best.blob),
                   code_bytes=best.byte_groups["code"], bytes_by_group=best.byte_groups, eval_seconds=best.eval_seconds,
                   quant_gap_bpb=best.val_bpb - pre.bpb, allocation=best.label, config=config_to_dict(best.config),
                   feasible=best.feasible, trial_seconds=time.perf_counter() - started)
    _write_json(directory, METRICS_FILE, metrics)
    result = {"status": "complete", "metrics": metrics}
    _write_json(directory, RESULT_FILE, result)
    return result


def main() -> int:
    directory = sys.argv[1]
    if os.environ.get("PGOLF_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["PGOLF_THREADS"]))
    try:
        run_trial(directory)
    except Exception as exc:  # the process boundary: any failure fails this trial, with its reason kept
        with open(os.path.join(directory, "error.txt"), "w", encoding="utf-8") as f:
            f.write(traceback.format_exc())
        print(f"trial failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
