"""The study loop: ask Optuna for a config, reject what cannot fit, run the rest, tell the outcome.

Ask/tell stays here, so constraints and pruning work the same with every backend: the local backend's loop
(LocalBackend.drive) and Ray Tune's searcher (search/backends/tune.py) both start trials with prepare_next and tell
them with finish:
- ask: the space turns the trial into a config; the byte predictor rejects, before any training, a
  config whose cheapest allowed allocation is over the byte cap (told PRUNED, with its constraints and
  the reason, so the sampler learns the boundary: see tell_unscored);
- run: the trial process trains (reporting val bpb to the pruner), allocates and writes its folder;
- tell: values (post-roundtrip bpb; and bytes in Pareto mode) with constraints bytes/train/eval - cap.
A trial's folder is staged and renamed into trials/NNNN only when its process ended, so a killed
study leaves no half-written trial; `search resume` fails trials left RUNNING by dead owners and
runs their configs again. SIGINT (Ctrl-C) and SIGTERM stop the study in order: finished trials are
kept, running ones are stopped, failed and queued to run again, and the resume command is printed.
"""

import dataclasses
import fcntl
import json
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from contextlib import contextmanager

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled  # Optuna 5.1 exports no public test of heartbeat support
from optuna.trial import TrialState

from objectives.bytes import Calibration, load_calibration, predict_artifact_bytes
from objectives.constraints import Outcome, at_submission_ranks, constraint_values, is_feasible, objective_values, record_constraints
from pgolf.config import QuantConfig, config_to_dict
from pgolf.metrics import RunMetrics, recorded_names
from pgolf.model import EMBEDDING_PREFIXES
from pgolf.staging import Interrupted
from search.backends import make_backend
from search.allocation.knapsack import packing
from search.backends.process import WORKER_LOG, Job
from search.budget.fidelity import extrapolation_spec, proxy_config, trial_pruning
from search.budget.reruns import RANKS_ATTR, RERUN_ATTR, SEED_ATTR, queue_reruns, rung_caps, rung_config, trial_ranks
from search.budget.stepbudget import CALIBRATION_FILE, budget_config, read_calibration
from search.study import HEARTBEAT_SECONDS, TRIALS_DIR, StudyError, storage_trial_id, study_command, trial_dir
from search.trialfiles import PLACEMENT_FILE, REQUEST_FILE, RESULT_FILE
from space.sample import suggest_config
from space.spec import Space, SpaceError

MAX_CONSECUTIVE_FAILURES = 5


def process_identity(pid: int) -> str:
    """host:pid:start-time, unique even when the OS reuses the pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            start = f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        start = "?"
    return f"{socket.gethostname()}:{pid}:{start}"


def owner_alive(owner: str) -> bool | None:
    """True/False for an owner on this host; None when it ran elsewhere (unknowable from here)."""
    host, pid, start = (owner.split(":") + ["", "", ""])[:3]
    if host != socket.gethostname():
        return None
    return pid.isdigit() and process_identity(int(pid)) == owner


@contextmanager
def file_lock(path: str):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def study_calibration(study: optuna.Study, before: float | None = None) -> Calibration:
    """Byte-predictor calibration from this study's trained checkpoints (finished before `before`); trials
    trained but over the byte cap are PRUNED (see tell_unscored) and count too."""
    observations = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if "calibration" in t.user_attrs and (before is None or t.datetime_complete.timestamp() < before):
            observations.append(t.user_attrs["calibration"])
    return Calibration.from_observations(observations) if observations else load_calibration()


def predict_min_bytes(config, space: Space, calibration: Calibration) -> int:
    """The fewest artifact bytes the space's allocation could give `config`: its cheapest widths under each allowed
    compressor (a compressor's code counts too: rans ships its decoder)."""
    return min(predict_artifact_bytes(dataclasses.replace(config, quant=cheapest_quant(space, calibration, compressor)), calibration)
               for compressor in space.allocation.compressors)


def cheapest_quant(space: Space, calibration: Calibration, compressor: str = "zstd") -> QuantConfig:
    """The allocation with the fewest predicted bytes the space allows under `compressor`."""
    def cheapest(role, widths):
        ints = [b for b in widths if b != 16]
        if not ints:
            return 16, 0.0
        return min(((b, c) for b in ints for c in space.allocation.clip), key=lambda bc: calibration.int_bits(role, *bc))

    block_bits, block_clip = cheapest("matrix", space.allocation.bits)
    emb_bits, emb_clip = cheapest("embedding", space.allocation.embedding_bits)
    # Token-side matrices (the embedding, an untied head, a factored embedding's projection) at the embedding widths.
    token_side = [prefix + "weight" for prefix in EMBEDDING_PREFIXES]
    return QuantConfig(bits={"*": block_bits, **dict.fromkeys(token_side, emb_bits)},
                       clip={"*": block_clip, **dict.fromkeys(token_side, emb_clip)}, keep_float_max_numel=0,
                       compressor=compressor, **packing(space.base.quant))  # how the trials' artifacts are packed


class Coordinator:
    def __init__(self, directory: str, settings, space: Space, study: optuna.Study, data, device: str | None,
                 out=None, backend=None):
        """`data(vocab_size)` gives the DataPaths a trial of that vocab trains and scores on; `backend` is
        make_backend(settings) unless given (made before the study is created, so a bad cluster stores nothing); `out`
        is where progress goes, sys.stdout as it is when the coordinator is made unless given."""
        self.directory = directory
        self.settings = settings
        self.space = space
        self.study = study
        self.data = data
        self.device = device
        self.out = out if out is not None else sys.stdout
        self.owner = process_identity(os.getpid())
        self.backend = backend or make_backend(settings)
        self.jobs: dict[int, tuple[Job, optuna.trial.Trial]] = {}
        self.started = time.time()
        self.stop_signal = None  # set by SIGINT / SIGTERM while run() is looping
        self.stopped: list[int] = []  # trials it stopped, failed and queued again
        self.failures_in_row = 0
        self.failure_stop_said = False
        self.rerunning = False  # sampling is over and the re-runs it queued are running
        self.done_at_start = self.finished()
        # A cap in a reference machine's seconds: the study's speed calibration (measured before its first trial).
        self.speed = read_calibration(directory) if space.caps.train_reference else None
        if space.caps.train_reference and self.speed is None:
            raise StudyError(f"study {settings.name!r}: its cap is in {space.caps.train_reference} seconds but it has no "
                             f"{CALIBRATION_FILE}: resume it to measure one")
        self.last_line, self.last_print, self.last_progress, self.last_beat = None, 0.0, 0.0, time.time()
        os.makedirs(os.path.join(directory, TRIALS_DIR), exist_ok=True)

    # -- counting -------------------------------------------------------------------------------
    def counts(self) -> dict:
        """Trials by state; re-runs (search/budget/reruns.py) are counted apart, not against the study's trial count."""
        trials = self.study.get_trials(deepcopy=False)
        reruns = [t for t in trials if RERUN_ATTR in t.user_attrs]
        trials = [t for t in trials if RERUN_ATTR not in t.user_attrs]
        states = [t.state for t in trials]
        counts = {s: states.count(s) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)}
        # Rejected before training, or trained with no allocation under the cap: PRUNED in the storage
        # (tell_unscored), but not what a user means by pruned.
        counts["over cap"] = sum(t.state == TrialState.PRUNED and t.user_attrs.get("stage") in ("rejected", "infeasible")
                                 for t in trials)
        counts["reruns"] = len(reruns)
        counts["reruns waiting"] = sum(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in reruns)
        return counts

    def finished(self) -> int:
        c = self.counts()
        return c[TrialState.COMPLETE] + c[TrialState.PRUNED]

    # -- ask ------------------------------------------------------------------------------------
    def prepare_next(self, reruns: bool = False) -> tuple[Job, optuna.trial.Trial] | None:
        """Ask Optuna for the next trial to train and write its request into a staging folder: (job, trial),
        or None when the study has enough trials (with `reruns`: when no queued trial is left to run).
        A trial that cannot be run (the predictor puts it over the byte cap, or the space cannot build its
        config) is told here and the next one asked. Both backends start trials from here."""
        while True:
            with file_lock(os.path.join(self.directory, ".ask.lock")):
                c = self.counts()
                if reruns and not self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                    return None
                if not reruns and c[TrialState.COMPLETE] + c[TrialState.PRUNED] + c[TrialState.RUNNING] >= self.settings.trials:
                    return None
                trial = self.study.ask()
                trial.set_user_attr("owner", self.owner)
                self.beat(trial)
            if self.space.script is not None:  # a script trial: its environment, no byte prediction (search/script/study.py)
                from search.script.study import prepare_script_trial

                job = prepare_script_trial(self, trial)
                if job is None:
                    continue
                self.jobs[trial.number] = (job, trial)
                return job, trial
            try:
                config, values = suggest_config(self.space, trial)
            except SpaceError as exc:
                self.study.tell(trial, state=TrialState.FAIL)
                self.say(f"trial {trial.number}: {exc}")
                continue
            if trial.user_attrs.get(SEED_ATTR) is not None:  # a re-run: the same configuration with a new seed
                config = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=trial.user_attrs[SEED_ATTR]))
            config = proxy_config(config, self.space.search, self.space.caps)
            config = rung_config(config, trial_ranks(trial, self.settings), self.space.search)  # a ladder's lower rung
            budget = None
            if self.speed is not None:  # the cap in reference seconds becomes this shape's step budget
                config, budget = budget_config(config, self.speed, self.space.caps.train_seconds)
            trial.set_user_attr("sampled", values)
            calibration = study_calibration(self.study)
            minimum = predict_min_bytes(config, self.space, calibration)
            trial.set_user_attr("predicted_min_bytes", minimum)
            if minimum > self.space.caps.artifact_bytes:
                self.reject(trial, config, minimum)
                continue
            job = self.stage(trial, config, budget)
            self.jobs[trial.number] = (job, trial)
            return job, trial

    def reject(self, trial, config, minimum: int) -> None:
        reason = f"predicted {minimum:,} bytes at the cheapest allowed allocation, over the {self.space.caps.artifact_bytes:,}-byte cap"
        trial.set_user_attr("stage", "rejected")
        trial.set_user_attr("reason", reason)
        trial.set_user_attr("config", config_to_dict(config))
        tell_unscored(self.study, trial, constraint_values(Outcome(math.nan, minimum, 0.0, 0.0), self.space.caps))
        self.say(f"trial {trial.number}: rejected before training: {reason}")

    def stage(self, trial, config, budget: dict | None = None) -> Job:
        """The trial's staging folder with its request: what a trial process on any node reads (with `budget`, the
        step budget it trains in place of the reference machine's seconds)."""
        final = trial_dir(self.directory, trial.number)
        staging = tempfile.mkdtemp(prefix=f".{trial.number:04d}.partial-", dir=os.path.dirname(final))
        os.chmod(staging, 0o755)
        request = {"study": self.settings.name, "storage": self.settings.storage, "trial_id": storage_trial_id(trial),
                   "trial_number": trial.number, "config": config_to_dict(config),
                   "data": dataclasses.asdict(self.data(config.model.vocab_size)),
                   "caps": dataclasses.asdict(self.space.caps), "allocation": dataclasses.asdict(self.space.allocation),
                   "device": self.device, "ranks": trial_ranks(trial, self.settings),
                   "pruner": trial_pruning(self.space, self.settings.objectives, RERUN_ATTR in trial.user_attrs, self.backend.stops_trials),
                   "extrapolate": extrapolation_spec(self.space.search, self.space.caps), "launched_at": time.time()}
        if budget is not None:
            request["step_budget"] = budget
        with open(os.path.join(staging, REQUEST_FILE), "w", encoding="utf-8") as f:
            json.dump(request, f, indent=2)
        trial.set_user_attr("stage", "running")
        return Job(number=trial.number, directory=staging)

    # -- tell -----------------------------------------------------------------------------------
    def collect(self) -> None:
        """Tell every trial whose process the backend reports ended."""
        for number, (job, trial) in list(self.jobs.items()):
            code = self.backend.poll(job)
            if code is None:
                continue
            del self.jobs[number]
            self.finish(trial, job, code)

    def finish(self, trial, job: Job, code: int) -> None:
        result_path = os.path.join(job.directory, RESULT_FILE)
        result = None
        if code == 0 and os.path.exists(result_path):
            with open(result_path, encoding="utf-8") as f:
                result = json.load(f)
        final = trial_dir(self.directory, trial.number)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(job.directory, final)
        placement_path = os.path.join(final, PLACEMENT_FILE)
        if os.path.exists(placement_path):  # which host / Ray node / GPUs the trial ran on
            with open(placement_path, encoding="utf-8") as f:
                trial.set_user_attr("placement", json.load(f))
        if result is None:
            reason = _failure_reason(final, code)
            trial.set_user_attr("stage", "failed")
            trial.set_user_attr("reason", reason)
            self.study.tell(trial, state=TrialState.FAIL)
            self.failures_in_row += 1
            self.say(f"trial {trial.number}: failed: {reason}")
            return
        self.failures_in_row = 0
        if result["status"] == "pruned":
            trial.set_user_attr("stage", "pruned")
            trial.set_user_attr("reason", result.get("reason", ""))
            self.study.tell(trial, state=TrialState.PRUNED)
            self.say(f"trial {trial.number}: pruned ({result.get('reason', '')})")
            return
        self.record_complete(trial, final, result)

    def record_complete(self, trial, final: str, result: dict) -> None:
        m = RunMetrics.from_dict(result["metrics"])
        calibration_path = os.path.join(final, "calibration.json")
        if os.path.exists(calibration_path):
            with open(calibration_path, encoding="utf-8") as f:
                trial.set_user_attr("calibration", json.load(f))
        self._record_metrics(trial, m, "trained")
        caps = rung_caps(self.space.caps, trial_ranks(trial, self.settings), self.space.search)  # a ladder's lower rung: scaled
        if result["status"] == "infeasible":
            # Trained, but no allowed allocation fits the byte cap: nothing was packed, so there is no
            # post-roundtrip bpb, and the excess is unknown (one byte over stands for "over the cap").
            trial.set_user_attr("stage", "infeasible")
            trial.set_user_attr("reason", result["reason"])
            outcome = Outcome(math.nan, self.space.caps.artifact_bytes + 1, capped_train_seconds(m), 0.0)
            tell_unscored(self.study, trial, constraint_values(outcome, caps))
            self.say(f"trial {trial.number}: infeasible after {m.train_seconds:.0f}s of training: {result['reason']}")
            return
        trial.set_user_attr("stage", "complete")
        self._record_metrics(trial, m, "scored")  # with a proxy budget, also the prediction at the target
        for key in ("script_reported_bytes", "script_values"):  # a script's own word on its bytes, and its environment
            if key in result["metrics"]:
                trial.set_user_attr(key, result["metrics"][key])
        if self.space.script is None:  # a script trial has no config to predict its bytes from
            calibration = study_calibration(self.study, before=trial.datetime_start.timestamp())
            from pgolf.config import config_from_dict

            predicted = predict_artifact_bytes(config_from_dict(m.config), calibration)
            trial.set_user_attr("predicted_bytes", predicted)
            trial.set_user_attr("predictor_rel_error", (predicted - m.artifact_bytes) / m.artifact_bytes)
        # A trial that recorded its ranks is judged at the submission's (caps.eval_ranks); one that did not, as measured.
        eval_seconds = m.eval_seconds if m.world_size is None else at_submission_ranks(m.eval_seconds, m.world_size, caps)
        outcome = Outcome(m.val_bpb_post, m.artifact_bytes, capped_train_seconds(m), eval_seconds)
        constraints = constraint_values(outcome, caps)
        record_constraints(trial, constraints)
        self.study.tell(trial, objective_values(outcome, self.settings.objectives))
        on = f" on {m.step_budget['machine']} ({m.steps} steps)" if m.step_budget else ""
        self.say(f"trial {trial.number}: bpb {outcome.val_bpb:.4f}, {outcome.artifact_bytes:,} bytes, train {outcome.train_seconds:.0f}s{on}, "
                 f"eval {outcome.eval_seconds:.1f}s, {'feasible' if is_feasible(constraints) else 'infeasible'}")

    @staticmethod
    def _record_metrics(trial, m: RunMetrics, record: str) -> None:
        """The figures a trial keeps as user attributes (RunMetrics fields marked `record`), those it measured."""
        for key in recorded_names(record):
            if getattr(m, key) is not None:
                trial.set_user_attr(key, getattr(m, key))

    # -- loop -----------------------------------------------------------------------------------
    def run(self) -> None:
        previous = self._catch_stop_signals()
        try:
            self.backend.drive(self)
            if self.stop_signal is not None:
                self.stop_running()
        finally:
            for job, trial in self.jobs.values():  # only after an unexpected error: no trial outlives the study
                self.backend.cancel(job)
            self.backend.shutdown()
            for signum, handler in previous.items():
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self.progress(final=True)
        resume = study_command("resume", self.settings.name, os.path.dirname(self.directory))
        if self.stop_signal is not None:
            raise Interrupted(self.stop_signal, f"interrupted by {signal.Signals(self.stop_signal).name}: {self.finished()} finished "
                                                f"trial(s) kept, {len(self.stopped)} stopped and queued to run again; {resume} continues the study")
        if self.failures_in_row >= MAX_CONSECUTIVE_FAILURES:
            raise StudyError(f"study {self.settings.name} stopped after {MAX_CONSECUTIVE_FAILURES} failed trials in a row: "
                             f"see {self.directory}/trials/*/error.txt; {resume} continues it")

    def sampling_over(self, rerunning: bool) -> bool:
        """No new trial is to be sampled: the timeout passed (it bounds sampling; the re-runs queued after it
        run to the end) or too many trials failed in a row."""
        if self.failures_in_row >= MAX_CONSECUTIVE_FAILURES:
            if not self.failure_stop_said:
                self.say(f"stopping: {MAX_CONSECUTIVE_FAILURES} trials failed in a row")
                self.failure_stop_said = True
            return True
        return not rerunning and self.settings.timeout is not None and time.time() - self.started > self.settings.timeout

    def next_phase(self) -> bool:
        """Called when nothing runs and nothing more is to be started: True if re-runs were queued and the
        study goes on with them (once: after the re-runs the study ends)."""
        if self.rerunning or self.failures_in_row >= MAX_CONSECUTIVE_FAILURES or not self.queue_reruns():
            return False
        self.rerunning = True
        return True

    def tick(self) -> None:
        """The progress line, at most once a second (each costs storage reads), and the running trials' heartbeats."""
        if time.time() - self.last_progress >= 1.0:
            self.progress()
            self.last_progress = time.time()
        if time.time() - self.last_beat >= HEARTBEAT_SECONDS:
            for _, trial in self.jobs.values():
                self.beat(trial)
            self.last_beat = time.time()

    def beat(self, trial: optuna.trial.Trial) -> None:
        """A trial's heartbeat, on storages that keep them (database URLs; see search/study.py)."""
        if is_heartbeat_enabled(trial.storage):
            trial.storage.record_heartbeat(storage_trial_id(trial))

    def queue_reruns(self) -> bool:
        """After sampling: queue the re-runs the space asks for (True if any is left to run)."""
        plan = self.space.search
        if plan.rerun_top <= 0 or self.settings.objectives != "bpb":
            return False
        queued = queue_reruns(self.study, plan.rerun_top, plan.rerun_seeds, plan.promote_ranks)
        waiting = len(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        if queued:
            on = f" on {plan.promote_ranks} ranks" if plan.promote_ranks else ""
            self.say(f"sampling done: re-running the best {plan.rerun_top} configuration(s){on} with {plan.rerun_seeds} new seed(s) "
                     f"each ({queued} trial(s))")
        return waiting > 0

    def _catch_stop_signals(self) -> dict:
        """SIGINT and SIGTERM only set stop_signal, which the loop reads between steps: an exception raised
        mid-step could cut a storage write or a folder rename in half. Returns the handlers to restore."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def stop(signum, frame):
            self.stop_signal = self.stop_signal or signum

        return {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}

    def stop_running(self) -> None:
        """Stop every running trial: one that had already ended is told as usual; the others are failed,
        their folders removed (nothing half-written) and their configs queued to run again."""
        name = signal.Signals(self.stop_signal).name
        self.say(f"{name}: stopping {len(self.jobs)} running trial(s)")
        for number, (job, trial) in sorted(self.jobs.items()):
            self.backend.cancel(job)
            code = self.backend.poll(job)
            del self.jobs[number]
            if code == 0:  # it finished before it could be stopped: its result stands
                self.finish(trial, job, code)
                continue
            # Queued before it is failed: if this process dies in between, recover_stale finds the retry and
            # does not queue a second one.
            requeue(self.study, number, trial.params, trial.user_attrs)
            trial.set_user_attr("stage", "failed")
            trial.set_user_attr("reason", f"stopped by {name}; queued to run again as a new trial")
            self.study.tell(trial, state=TrialState.FAIL)
            shutil.rmtree(job.directory, ignore_errors=True)
            self.stopped.append(number)
            self.say(f"trial {number}: stopped by {name}; marked failed and queued to run again")

    # -- reporting ------------------------------------------------------------------------------
    def say(self, message: str) -> None:
        if self.out.isatty():
            self.out.write("\r\033[K")
        print(message, file=self.out, flush=True)
        self.last_line = None

    def progress(self, final: bool = False) -> None:
        c = self.counts()
        done = c[TrialState.COMPLETE] + c[TrialState.PRUNED]
        elapsed = time.time() - self.started
        best = best_feasible(self.study)
        eta = "-"
        new_done = done - self.done_at_start
        if new_done > 0 and done < self.settings.trials:
            eta = _duration(elapsed / new_done * (self.settings.trials - done))
        reruns = f" + {c['reruns']} re-run(s) ({c['reruns waiting']} to go)" if c["reruns"] else ""
        line = (f"[{self.settings.name}] {done}/{self.settings.trials} done{reruns}, {c[TrialState.RUNNING]} running, "
                f"{c[TrialState.PRUNED] - c['over cap']} pruned, {c['over cap']} over the cap, {c[TrialState.FAIL]} failed | best feasible bpb "
                f"{'%.4f (#%d)' % (best.values[0], best.number) if best else '-'} | elapsed {_duration(elapsed)} ETA {eta}")
        if self.out.isatty() and not final:
            self.out.write("\r\033[K" + line)
            self.out.flush()
            return
        # Not a terminal (a log file): a line when the counts or the best change, else once a minute.
        state = line.split(" | elapsed")[0]
        if final or state != self.last_line or time.time() - self.last_print > 60:
            print(line, file=self.out, flush=True)
            self.last_line, self.last_print = state, time.time()


def capped_train_seconds(m: RunMetrics) -> float:
    """The training time the train cap is checked against: in the reference machine's seconds for a budgeted trial."""
    return m.reference_train_seconds if m.reference_train_seconds is not None else m.train_seconds


def tell_unscored(study: optuna.Study, trial, constraints: dict) -> None:
    """Tell a trial that has no post-roundtrip bpb (rejected before training, or trained but no allocation
    fits) as PRUNED with its constraints, not as COMPLETE with a placeholder value.

    TPE (Optuna 5) learns from COMPLETE and PRUNED trials alike and files any trial with a positive
    constraint among the "bad" ones before it looks at state or value, so it avoids over-cap regions exactly
    as it did when these were COMPLETE with a placeholder (FAIL would hide them from it). A placeholder
    value, though, flattens every history plot and feeds parameter importances (Optuna's and the
    dashboard's read COMPLETE trials only) with trials that never trained. NSGA-II breeds from COMPLETE
    trials only, so it no longer sees these; it bred from infeasible ones only when too few were feasible.
    A trained one that reported to the pruner keeps its last report as its value (Optuna's rule for pruned
    trials); being infeasible, that value is never ranked."""
    record_constraints(trial, constraints)
    study.tell(trial, state=TrialState.PRUNED)


def best_feasible(study: optuna.Study):
    """The feasible complete trial with the lowest bpb (rejected and infeasible trials are PRUNED: tell_unscored)."""
    best = None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if not is_feasible(t.constraints):
            continue
        if best is None or t.values[0] < best.values[0]:
            best = t
    return best


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _failure_reason(directory: str, code: int) -> str:
    for name in (WORKER_LOG, "error.txt"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = [line.strip() for line in f if line.strip()]
            if lines:
                return f"exit code {code}: {lines[-1][:300]}"
    return f"exit code {code} (killed?)"


def requeue(study: optuna.Study, number: int, params: dict, user_attrs: dict) -> bool:
    """Queue a stopped trial's config to run again as a new trial, exactly once: False if a retry is queued already."""
    if any(t.user_attrs.get("retry_of") == number for t in study.get_trials(deepcopy=False)):
        return False
    attrs = {"retry_of": number, **({"baseline": True} if user_attrs.get("baseline") else {}),
             **{k: user_attrs[k] for k in (RERUN_ATTR, SEED_ATTR, RANKS_ATTR) if k in user_attrs}}  # a re-run stays a re-run
    study.enqueue_trial(params, user_attrs=attrs)
    return True


def recover_stale(study: optuna.Study, directory: str, out=None) -> int:
    """Fail RUNNING trials whose owner process is gone, and enqueue their configs to run again. An owner on
    this machine is checked by its process identity; one elsewhere by the trial's heartbeat, where the storage
    keeps them (a database), else its trial is left alone (it may still be running)."""
    # These FrozenTrials (no .storage, unlike a Trial) are changed through the study's storage: Study has no public
    # accessor for it.
    storage = study._storage
    # Listed without failing them (optuna.storages.fail_stale_trials fails them before a retry could be queued).
    stale = set(storage._get_stale_trial_ids(storage.get_study_id_from_name(study.study_name))) if is_heartbeat_enabled(storage) else set()
    recovered = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        alive = owner_alive(t.user_attrs.get("owner", ""))
        trial_id = storage_trial_id(t)
        if alive or (alive is None and trial_id not in stale):
            continue
        requeue(study, t.number, t.params, t.user_attrs)
        reason = "its study process died mid-trial" if alive is False else "its study process on another machine went silent"
        storage.set_trial_user_attr(trial_id, "reason", f"{reason}; re-run as a new trial")
        storage.set_trial_user_attr(trial_id, "stage", "failed")
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        recovered += 1
        print(f"trial {t.number}: left running by a {'dead' if alive is False else 'silent'} process; marked failed and queued again", file=out)
    trials = os.path.join(directory, TRIALS_DIR)
    if os.path.isdir(trials):
        for name in os.listdir(trials):
            if name.startswith(".") and ".partial-" in name:
                number = int(name[1:5])
                state = next((t.state for t in study.get_trials(deepcopy=False) if t.number == number), None)
                if state != TrialState.RUNNING:
                    shutil.rmtree(os.path.join(trials, name), ignore_errors=True)
    return recovered
