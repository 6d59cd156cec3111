"""One trial, in its own process: train -> intermediate reports (pruning) -> allocation -> files.

`python -m search.trial DIR` reads DIR/request.json (written by the coordinator) and writes into DIR
only: placement.json, config.toml, train.log, reports.jsonl, checkpoint.pgolf, calibration.json,
allocation.json, final_model.pgolf, train_gpt.py, metrics.json, and last result.json (status complete | pruned | infeasible). A crash, OOM
or NaN leaves no result.json; the coordinator then fails this trial alone.
"""

import dataclasses
import importlib
import json
import os
import sys
import time

import torch

from pgolf.assemble import write_script
from pgolf.checkpoint import CHECKPOINT_FILE, checkpoint_bytes
from pgolf.config import config_from_dict, config_to_dict
from pgolf.configfiles import config_to_toml
from pgolf.datasets import DataPaths
from pgolf.evaluate import EvalResult
from pgolf.metrics import pipeline_metrics, write_metrics
from pgolf.run import RunLog, subset_validator
from pgolf.gptq import check_calibration
from pgolf.submission import MODEL_FILE, Packed, exit_process, score, setup_runtime, train_pack_score

from objectives.bytes import measure_calibration, rtn_sizes
from search.allocation import AllocationRequest, FormatChoices, allocate
from search.backends.spare import SPARE_FLAG, wait_for_trial
from search.budget.fidelity import predict_at_target
from search.budget.phases import PhaseClock
from search.memory import halved_micro_batch, pass_tokens, peak_memory, raise_test_oom
from search.ranks import RankFailed, RankGroup, is_extra_rank, leave_training_group, run_extra_rank
from search.budget.stepbudget import reference_train_seconds, submission_config
from search.trialfiles import (PLACEMENT_FILE, REPORTS_FILE, REQUEST_FILE, RESULT_FILE, _reporter, _write_json, fail_at_boundary,
                               placement)
from space.spec import AllocationSpace, Caps

class TrialSteps:
    """One trial's settings, folder, log and phase clock, and the steps it passes to the pipeline (train_pack_score):
    timed validation reports to the pruner, the checkpoint and option bytes after training, and the post-training
    allocation, which chooses the stored form by scoring candidates from their bytes."""

    def __init__(self, directory: str, request: dict, clock: PhaseClock):
        self.directory, self.request, self.clock = directory, request, clock
        self.config = config_from_dict(request["config"])
        self.data = DataPaths(**request["data"])
        self.caps = Caps(**request["caps"])
        self.budget = request.get("step_budget")  # a cap in a reference machine's seconds, as this trial's steps
        self.alloc_space = AllocationSpace(**request["allocation"])
        self.log = RunLog(os.path.join(directory, "train.log"), echo=False)
        self.runtime = setup_runtime(request.get("device"))
        self.ranks = self.runtime.world_size  # the runtime becomes rank 0's alone after training
        self.attempt = 1  # 2: retrying with half the micro-batch after a CUDA out-of-memory error
        self.reports: list = []
        self.sizes: dict = {}  # every RTN option's bytes (measured after training)
        self.allocation = self.best = None  # the allocation's result and its chosen candidate (None: nothing fits)
        self._on_val = _reporter(request)
        self._validate_subset = subset_validator(self.config, self.data, self.runtime)

    def write_json(self, name: str, data) -> None:
        _write_json(self.directory, name, data)

    def write_placement(self) -> None:
        """Where the trial ran, its ranks and passes, and (once it has run) the peak memory it reached there."""
        device = self.runtime.device
        self.write_json(PLACEMENT_FILE, {**placement(device), "ranks": self.ranks, "pass_tokens": pass_tokens(self.config, self.ranks, device),
                                         "attempts": self.attempt, "threads_per_rank": torch.get_num_threads(), **peak_memory(device)})

    def train_pack_score(self):
        """The pipeline (train_pack_score), retried once with half the micro-batch after a CUDA out-of-memory error.
        A trial of several ranks is not retried: the rank that ran out fails it (its reason names the rank)."""
        while True:
            try:
                # The float model is scored on the reports' validation subset: the quantization gap is measured there,
                # and the whole split is scored once, for the chosen allocation.
                return train_pack_score(self.config, self.data, self.runtime, os.path.join(self.directory, MODEL_FILE), log=self.log,
                                        validate_fn=self.validate, on_val=self.report, pre_tokens=self.config.train.val_tokens,
                                        after_training=self.after_training, post_training=self.allocate_storage)
            except torch.cuda.OutOfMemoryError as exc:
                device = self.runtime.device
                smaller = halved_micro_batch(self.config, self.ranks, device) if self.attempt == 1 and self.ranks == 1 else None
                if smaller is None:
                    raise
                self.log(f"{str(exc).splitlines()[0]} with {pass_tokens(self.config, 1, device):,} tokens per pass: "
                         f"retrying once with {smaller.train.micro_batch_tokens:,}")
                self.config, self.attempt, self.reports = smaller, 2, []
                open(os.path.join(self.directory, REPORTS_FILE), "w").close()
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    def validate(self, model) -> float:
        raise_test_oom(len(self.reports) + 1, self.attempt)
        started = time.perf_counter()
        bpb = self._validate_subset(model)
        self.clock.add("validation reports", time.perf_counter() - started)
        return bpb

    def report(self, step: int, bpb: float) -> None:
        # Reports come every val_every_seconds of training (every val_every steps at a fixed-compute proxy): the
        # k-th report of every trial is at the same training time, or step, which is what the pruner compares.
        self.reports.append((len(self.reports) + 1, bpb))
        with open(os.path.join(self.directory, REPORTS_FILE), "a", encoding="utf-8") as f:
            f.write(json.dumps(self.reports[-1]) + "\n")
        if self._on_val is not None:
            self._on_val(len(self.reports), bpb)

    def after_training(self, model, trained) -> None:
        leave_training_group(self.runtime)  # with N ranks: rank 0 allocates and scores alone, as a one-rank trial
        # train_model's wall: model set-up, the training the cap counts, and the validation reports (timed by validate).
        validation = self.clock.seconds.pop("validation reports", 0.0)
        self.clock.lap_parts({"model set-up": None, "training": trained.train_seconds, "validation reports": validation})
        with open(os.path.join(self.directory, CHECKPOINT_FILE), "wb") as f:
            f.write(checkpoint_bytes(model, self.config))
        self.clock.lap("checkpoint")
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        # One table of every RTN option's bytes: the study's byte calibration and the allocation both read it.
        space = self.alloc_space
        widths = sorted(set(space.bits) | set(space.embedding_bits))
        self.sizes = rtn_sizes(state, sorted(set(widths) | {16}), space.clip)
        self.write_json("calibration.json", measure_calibration(state, widths, space.clip, self.sizes))
        self.clock.lap("option bytes")

    def allocate_storage(self, model, trained, pre) -> Packed | None:
        """The post-training step: the chosen candidate's bytes, with the score they were chosen by (None: no
        candidate was scored)."""
        self.clock.lap("pre-quant score")
        config, caps, train_seconds = self.config, self.caps, trained.train_seconds
        if self.budget:  # the train cap in this machine's seconds at the speed ratio; training at its modelled step time
            caps = dataclasses.replace(caps, train_seconds=caps.train_seconds / self.budget["ratio"])
            train_seconds = trained.steps * self.budget["local_step_ms"] / 1000
        self.allocation = allocate(AllocationRequest(model, config, self.alloc_space, caps, self.data, self.runtime,
                                                     seconds_per_token=pre.seconds / max(pre.tokens, 1) if config.eval.stride == 0 else None,
                                                     train_seconds=train_seconds, sizes=self.sizes), log=self.log)
        self.clock.last = time.perf_counter()
        for name, seconds in self.allocation.phases.items():
            self.clock.add(f"allocation: {name}", seconds)
        self.write_json("allocation.json", self.allocation.record())
        # No feasible candidate: the smallest scored one (infeasible on eval or training time) is recorded; candidates
        # over the byte cap are never scored, so with only those the trial is infeasible.
        self.best = best = self.allocation.best or min((c for c in self.allocation.candidates if c.val_bpb == c.val_bpb),
                                                       key=lambda c: c.artifact_bytes, default=None)
        if best is None:
            return None
        post = EvalResult(loss=best.val_loss, bpb=best.val_bpb, tokens=0, bytes=0, seconds=best.eval_seconds)
        return Packed(best.blob, best.byte_groups, best.post_training_seconds, post=post)


def run_trial(directory: str) -> dict:
    entered = time.time()
    with open(os.path.join(directory, REQUEST_FILE), encoding="utf-8") as f:
        request = json.load(f)
    clock = PhaseClock()
    ranks = request.get("ranks", 1)
    # Ranks 1..N-1 start before this rank sets up its process group (which waits for them all).
    group = RankGroup(directory, ranks) if ranks > 1 else None
    try:
        return _run_trial(directory, request, clock, entered)
    except Exception as exc:
        failed = group.failure() if group is not None else None
        if failed:  # the cause, not its echo on this rank
            raise RankFailed(failed) from exc
        raise
    finally:
        if group is not None:  # pruned, failed or done: no rank outlives the trial
            group.end()


def _run_trial(directory: str, request: dict, clock: PhaseClock, entered: float) -> dict:
    if "launched_at" in request:  # process start and imports: from the coordinator's launch to here
        clock.add("start-up", max(entered - request["launched_at"], 0.0))
    steps = TrialSteps(directory, request, clock)
    config, data, runtime, log = steps.config, steps.data, steps.runtime, steps.log
    steps.write_placement()
    log(f"trial {request['trial_number']} of {request['study']} on {runtime.device}: {data.describe()}")
    with open(os.path.join(directory, "config.toml"), "w", encoding="utf-8") as f:
        f.write(config_to_toml(config))
    import optuna

    started = time.perf_counter()
    if FormatChoices.of(steps.alloc_space).extended:  # the allocation calibrates after training: fail now, not then
        check_calibration(data.train_pattern, config.train.seq_len, config.quant.calib_tokens)
    clock.lap("setup")
    try:
        outcome = steps.train_pack_score()
    except optuna.TrialPruned as exc:
        log(str(exc))
        steps.write_placement()
        result = {"status": "pruned", "reports": steps.reports, "reason": str(exc)}
        steps.write_json(RESULT_FILE, result)
        return result
    return _finish(steps, outcome, started)


def _finish(steps: TrialSteps, outcome, started: float) -> dict:
    """metrics.json and result.json of a trained trial; a complete one also gets the script and config of its allocation."""
    best, config, clock = steps.best, steps.config, steps.clock
    metrics = pipeline_metrics(outcome, best.byte_groups["code"] if best else 0)
    metrics.reports, metrics.allocation_seconds = steps.reports, steps.allocation.seconds
    metrics.world_size = steps.runtime.world_size  # the eval time's ranks: the constraint scales it to the submission's
    if steps.budget:
        trained = outcome.trained
        metrics.step_budget = {**steps.budget, "trained_steps": trained.steps,
                               "measured_local_step_ms": 1000 * trained.train_seconds / max(trained.steps, 1)}
        metrics.reference_train_seconds = reference_train_seconds(steps.budget, trained.steps, metrics.post_training_seconds or 0.0)
    if best is None:
        result = {"status": "infeasible", "reason": "no allowed allocation fits the byte cap"}
    else:
        metrics.quant_gap_bpb = quantization_gap(best, config, steps.data, steps.runtime, config.train.val_tokens, outcome.pre)
        clock.lap("quantization gap")
        if steps.request.get("extrapolate"):
            prediction = predict_at_target(steps.request["extrapolate"], outcome.trained, config, best.val_bpb, metrics.quant_gap_bpb)
            if prediction:
                metrics.extrapolated_bpb, metrics.target_steps, metrics.curve = (prediction["extrapolated_bpb"], prediction["target_steps"],
                                                                                 prediction["curve"])
                steps.log(f"extrapolated to {metrics.target_steps:.0f} steps: val_bpb {metrics.extrapolated_bpb:.4f}")
        # The pipeline wrote the model file; the script and config that go with it (the allocation's formats and eval settings;
        # a budgeted trial's with the reference machine's wallclock cap in place of its step budget).
        final = submission_config(best.config, steps.budget) if steps.budget else best.config
        write_script(steps.directory, config_to_dict(final))
        with open(os.path.join(steps.directory, "config.toml"), "w", encoding="utf-8") as f:
            f.write(config_to_toml(final))
        metrics.allocation, metrics.config, metrics.feasible = best.label, config_to_dict(final), best.feasible
        result = {"status": "complete"}
    clock.lap("write")
    steps.write_placement()
    metrics.phases, metrics.trial_seconds = clock.seconds, time.perf_counter() - started
    write_metrics(steps.directory, metrics)
    result["metrics"] = metrics.to_dict()
    steps.write_json(RESULT_FILE, result)
    return result


def quantization_gap(best, config, data, runtime, subset: int, pre) -> float:
    """Post - pre bpb of the stored model, both scored with the trial's own eval settings (not the stride,
    unroll or TTT the allocation chose) on the same tokens as `pre`: the damage of quantization alone."""
    fresh, _, _ = best.load_back(runtime.device)
    post = score(fresh, config.resolved_eval(), data.val_pattern, data.tokenizer, runtime, limit=subset)
    return post.bpb - pre.bpb


def main() -> int:
    directory = sys.argv[1]
    if os.environ.get("PGOLF_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["PGOLF_THREADS"]))
    from search.script.trial import is_script_trial, script_trial_main

    if directory == SPARE_FLAG:  # started before it was needed (search/backends/spare.py): the trial comes on stdin
        # What a trial imports once it runs, imported while it waits: Optuna's storage, and Dynamo, which the first
        # torch.optim optimizer imports (~1 s of a CPU trial's model set-up) even where nothing is compiled.
        for module in ("torch._dynamo", "search.study"):
            importlib.import_module(module)
        directory = wait_for_trial()

    if is_script_trial(directory):  # a user's training script, run as it is (search/script/trial.py)
        return script_trial_main(directory)
    if is_extra_rank():  # rank 1..N-1 of a trial (search/ranks.py): its failure is rank 0's to report
        exit_process(run_extra_rank(directory))
    try:
        run_trial(directory)
        code = 0
    except Exception:  # the process boundary: any failure fails this trial, with its reason kept
        code = fail_at_boundary(directory)
    return code


if __name__ == "__main__":
    # Everything is written: the process ends without the interpreter's finalization, which took ~0.7 s after result.json
    # (the coordinator tells the trial and starts the next one only once the process is gone), and which with N ranks
    # gloo's threads may abort (pgolf/submission.py).
    exit_process(main())
