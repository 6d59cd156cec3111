"""The coordinator's side of a script trial: a sampled point becomes the script's environment, staged as the
trial's request (search/script/trial.py runs it). There is no byte prediction to reject a point before it
runs: the script's bytes are known only once it has written its artifact."""

import json
import os
import tempfile
import time

from optuna.trial import TrialState

from search.backends.process import Job
from search.budget.fidelity import trial_pruning
from search.budget.reruns import RERUN_ATTR, SEED_ATTR
from search.script import ScriptError
from search.script.knobs import read_script
from search.script.run import script_command
from search.script.trial import KIND
from search.study import storage_trial_id, trial_dir
from space.script import env_strings, suggest_env

# A script that outlives its training and evaluation caps by this much is stopped and its trial fails as over time.
OVER_TIME_FACTOR = 1.25
OVER_TIME_SECONDS = 60.0


def time_limit(caps) -> float:
    return OVER_TIME_FACTOR * (caps.train_seconds + caps.eval_seconds) + OVER_TIME_SECONDS


def trial_seed(spec, trial) -> int | None:
    """A re-run's own seed, else the fixed environment's, else the script's default (None: it reads none)."""
    if trial.user_attrs.get(SEED_ATTR) is not None:
        return int(trial.user_attrs[SEED_ATTR])
    if not spec.seed_var:
        return None
    if spec.seed_var in spec.env:
        return int(float(spec.env[spec.seed_var]))
    default = read_script(spec.path).get(spec.seed_var).default_value()
    return int(default) if isinstance(default, (int, float)) else None


def script_request(coordinator, trial, values: dict) -> dict:
    space, spec = coordinator.space, coordinator.space.script
    env = dict(spec.env)
    env.update(env_strings(space, values))
    seed = trial_seed(spec, trial)
    if seed is not None:
        env[spec.seed_var] = str(seed)
    if spec.wallclock_var:
        env[spec.wallclock_var] = f"{space.caps.train_seconds:g}"
    script = {"path": spec.path, "counted": spec.counted_paths(), "code": spec.code, "artifact": spec.artifact,
              "final_tag": spec.final_tag, "ranks": spec.ranks, "report_every_seconds": spec.report_every_seconds,
              "command": script_command(spec.path, spec.ranks, spec.interpreter or None), "env": env, "values": values,
              "seed": seed, "time_limit": time_limit(space.caps)}
    settings = coordinator.settings
    return {"kind": KIND, "study": settings.name, "storage": settings.storage, "trial_id": storage_trial_id(trial),
            "trial_number": trial.number, "caps": {"artifact_bytes": space.caps.artifact_bytes, "train_seconds": space.caps.train_seconds,
                                                   "eval_seconds": space.caps.eval_seconds},
            # The pruner spec an engine trial's request carries (None for a re-run or where the backend stops trials).
            "pruner": trial_pruning(space, settings.objectives, RERUN_ATTR in trial.user_attrs, coordinator.backend.stops_trials),
            "script": script, "launched_at": time.time()}


def prepare_script_trial(coordinator, trial) -> Job | None:
    """The staged job of a script trial, or None when its point cannot be run (told FAIL, with the reason)."""
    try:
        values = suggest_env(coordinator.space, trial)
        request = script_request(coordinator, trial, values)
    except ScriptError as exc:
        trial.set_user_attr("stage", "failed")
        trial.set_user_attr("reason", str(exc))
        coordinator.study.tell(trial, state=TrialState.FAIL)
        coordinator.say(f"trial {trial.number}: {exc}")
        return None
    trial.set_user_attr("sampled", values)
    final = trial_dir(coordinator.directory, trial.number)
    staging = tempfile.mkdtemp(prefix=f".{trial.number:04d}.partial-", dir=os.path.dirname(final))
    os.chmod(staging, 0o755)
    with open(os.path.join(staging, "request.json"), "w", encoding="utf-8") as f:
        json.dump(request, f, indent=2)
    trial.set_user_attr("stage", "running")
    return Job(number=trial.number, directory=staging)
