"""One trial, in its own process: train -> intermediate reports (pruning) -> allocation -> files.

`python -m search.trial DIR` reads DIR/request.json (written by the coordinator) and writes into DIR
only: placement.json, config.toml, train.log, reports.jsonl, checkpoint.pgolf, calibration.json,
allocation.json, final_model.pgolf, train_gpt.py, metrics.json, and last result.json (status complete | pruned | infeasible). A crash, OOM
or NaN leaves no result.json; the coordinator then fails this trial alone.
"""

import json
import os
import socket
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
from pgolf.submission import load_model, score, setup_runtime, train_model

from objectives.bytes import measure_calibration, rtn_sizes
from search.allocation import FormatChoices, allocate, write_candidate
from search.budget.fidelity import predict_at_target
from search.budget.phases import PhaseClock
from space.spec import AllocationSpace, Caps

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
    spec = request.get("pruner")
    if not spec or spec["pruner"] == "none":
        return None
    import optuna

    from search.budget.fidelity import make_pruner, pareto_reporter, prunes_pareto
    from search.study import open_storage

    # The study's pruner is not stored with it: build the one the coordinator uses, from the same spec.
    study = optuna.load_study(study_name=request["study"], storage=open_storage(request["storage"]), pruner=make_pruner(spec))
    if prunes_pareto(spec):
        return pareto_reporter(study, request["trial_id"], spec)
    if spec["objectives"] != "bpb":
        return None
    trial = optuna.trial.Trial(study, request["trial_id"])

    def on_val(index: int, bpb: float) -> None:
        trial.report(bpb, index)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at report {index} (val bpb {bpb:.4f})")

    return on_val


def run_trial(directory: str) -> dict:
    entered = time.time()
    with open(os.path.join(directory, REQUEST_FILE), encoding="utf-8") as f:
        request = json.load(f)
    clock = PhaseClock()
    if "launched_at" in request:  # process start and imports: from the coordinator's launch to here
        clock.add("start-up", max(entered - request["launched_at"], 0.0))
    config = config_from_dict(request["config"])
    data = DataPaths(**request["data"])
    caps = Caps(**request["caps"])
    alloc_space = AllocationSpace(**request["allocation"])
    log = RunLog(os.path.join(directory, "train.log"), echo=False)
    runtime = setup_runtime(request.get("device"))
    _write_json(directory, PLACEMENT_FILE, placement(runtime.device))
    log(f"trial {request['trial_number']} of {request['study']} on {runtime.device}: {data.describe()}")
    with open(os.path.join(directory, "config.toml"), "w", encoding="utf-8") as f:
        f.write(config_to_toml(config))
    reports = []
    on_val = _reporter(request)
    subset = config.train.val_tokens

    def validate(model):
        started = time.perf_counter()
        bpb = score(model, config.resolved_eval(), data.val_pattern, data.tokenizer, runtime, limit=subset).bpb
        clock.add("validation reports", time.perf_counter() - started)
        return bpb

    def report(step, bpb):
        # Reports come every val_every_seconds of training (every val_every steps at a fixed-compute proxy): the
        # k-th report of every trial is at the same training time, or step, which is what the pruner compares.
        reports.append((len(reports) + 1, bpb))
        with open(os.path.join(directory, REPORTS_FILE), "a", encoding="utf-8") as f:
            f.write(json.dumps(reports[-1]) + "\n")
        if on_val is not None:
            on_val(len(reports), bpb)

    import optuna

    started = time.perf_counter()
    if FormatChoices.of(alloc_space).extended:  # the allocation calibrates after training: fail now, not then
        check_calibration(data.train_pattern, config.train.seq_len, config.quant.calib_tokens)
    clock.lap("setup")
    try:
        model, trained = train_model(config, data.train_pattern, runtime, validate_fn=validate, on_val=report, log=log)
    except optuna.TrialPruned as exc:
        log(str(exc))
        result = {"status": "pruned", "reports": reports, "reason": str(exc)}
        _write_json(directory, RESULT_FILE, result)
        return result
    # train_model's wall: model set-up, the training the cap counts, and the validation reports (timed by validate).
    validation = clock.seconds.pop("validation reports", 0.0)
    clock.lap_parts({"model set-up": None, "training": trained.train_seconds, "validation reports": validation})
    log(f"trained {trained.steps} steps in {trained.train_seconds:.1f}s ({trained.stopped_by})")
    with open(os.path.join(directory, CHECKPOINT_FILE), "wb") as f:
        f.write(checkpoint_bytes(model, config))
    clock.lap("checkpoint")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # One table of every RTN option's bytes: the study's byte calibration and the allocation both read it.
    widths = sorted(set(alloc_space.bits) | set(alloc_space.embedding_bits))
    sizes = rtn_sizes(state, sorted(set(widths) | {16}), alloc_space.clip)
    _write_json(directory, "calibration.json", measure_calibration(state, widths, alloc_space.clip, sizes))
    clock.lap("option bytes")
    # The float model on the same validation subset the reports use: the quantization gap is measured there,
    # and the whole split is scored once, for the chosen allocation.
    pre = score(model, config.resolved_eval(), data.val_pattern, data.tokenizer, runtime, limit=subset)
    log(f"pre-quant val_bpb {pre.bpb:.6f} on {pre.tokens:,} validation tokens")
    clock.lap("pre-quant score")
    allocation = allocate(model, config, alloc_space, caps, data, runtime, log=log,
                          seconds_per_token=pre.seconds / max(pre.tokens, 1) if config.eval.stride == 0 else None,
                          train_seconds=trained.train_seconds, sizes=sizes)
    clock.last = time.perf_counter()
    for name, seconds in allocation.phases.items():
        clock.add(f"allocation: {name}", seconds)
    _write_json(directory, "allocation.json", allocation.record())
    # No feasible candidate: the smallest scored one (infeasible on eval or training time) is recorded; candidates
    # over the byte cap are never scored, so with only those the trial is infeasible.
    best = allocation.best or min((c for c in allocation.candidates if c.val_bpb == c.val_bpb), key=lambda c: c.artifact_bytes, default=None)
    metrics = {"train_seconds": trained.train_seconds, "steps": trained.steps, "step_ms": 1000 * trained.train_seconds / max(trained.steps, 1),
               "train_tokens": trained.train_tokens, "stopped_by": trained.stopped_by, "params": count_params(model),
               "reports": reports, "allocation_seconds": allocation.seconds, **_pre_metrics(pre, subset)}
    if best is None:
        clock.lap("write")
        metrics.update(phases=clock.seconds, trial_seconds=time.perf_counter() - started)
        result = {"status": "infeasible", "reason": "no allowed allocation fits the byte cap", "metrics": metrics}
        _write_json(directory, METRICS_FILE, metrics)
        _write_json(directory, RESULT_FILE, result)
        return result
    gap = quantization_gap(best, config, data, runtime, subset, pre)
    clock.lap("quantization gap")
    if request.get("extrapolate"):
        prediction = predict_at_target(request["extrapolate"], trained, config, best.val_bpb, gap)
        if prediction:
            metrics.update(prediction)
            log(f"extrapolated to {prediction['target_steps']:.0f} steps: val_bpb {prediction['extrapolated_bpb']:.4f}")
    write_candidate(directory, best)
    # A submission calibrates and quantizes (GPTQ, AWQ) after training, on training data: training time.
    metrics["train_seconds"] = trained.train_seconds + best.post_training_seconds
    metrics.update(post_training_seconds=best.post_training_seconds, val_bpb_post=best.val_bpb, val_loss_post=best.val_loss, artifact_bytes=best.artifact_bytes, model_bytes=len(best.blob),
                   code_bytes=best.byte_groups["code"], bytes_by_group=best.byte_groups, eval_seconds=best.eval_seconds,
                   quant_gap_bpb=gap, allocation=best.label, config=config_to_dict(best.config), feasible=best.feasible)
    clock.lap("write")
    metrics.update(phases=clock.seconds, trial_seconds=time.perf_counter() - started)
    _write_json(directory, METRICS_FILE, metrics)
    result = {"status": "complete", "metrics": metrics}
    _write_json(directory, RESULT_FILE, result)
    return result


def _pre_metrics(pre, subset: int) -> dict:
    """The float model's score: the whole split when the reports use it (val_tokens 0), else the subset's."""
    if subset <= 0:
        return {"val_bpb_pre": pre.bpb}
    return {"val_bpb_pre_subset": pre.bpb, "subset_tokens": pre.tokens}


def quantization_gap(best, config, data, runtime, subset: int, pre) -> float:
    """Post - pre bpb of the stored model, both scored with the trial's own eval settings (not the stride,
    unroll or TTT the allocation chose) on the same tokens as `pre`: the damage of quantization alone."""
    fresh, _, _ = load_model(best.blob, runtime.device)
    post = score(fresh, config.resolved_eval(), data.val_pattern, data.tokenizer, runtime, limit=subset)
    return post.bpb - pre.bpb


def main() -> int:
    directory = sys.argv[1]
    if os.environ.get("PGOLF_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["PGOLF_THREADS"]))
    from search.script.trial import is_script_trial, script_trial_main

    if is_script_trial(directory):  # a user's training script, run as it is (search/script/trial.py)
        return script_trial_main(directory)
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
