"""How a study reads outside pgolf: in optuna-dashboard (the real server, over its JSON API) and to the sampler.

Trials rejected before training, or trained with no allocation under the cap, have no bpb: they are told
PRUNED with their constraints (search.coordinator.tell_unscored), not COMPLETE with a placeholder value."""

import io
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
from optuna.trial import TrialState

from conftest import MICRO_SPACE
from objectives.constraints import CONSTRAINT_KEYS, Outcome, constraint_values, named_constraints
from pgolf.config import config_to_dict
from search.coordinator import Coordinator, tell_unscored
from search.study import StudySettings, make_sampler, open_study
from space.sample import suggest_config
from space.spec import Caps, load_space


def _metrics(config, bpb: float, artifact_bytes: int, eval_seconds: float) -> dict:
    """What a trial process reports for a trial that produced an artifact (figures made up, keys real)."""
    return {"val_bpb_pre": bpb - 0.01, "val_bpb_post": bpb, "artifact_bytes": artifact_bytes, "model_bytes": artifact_bytes - 83_000,
            "code_bytes": 83_000, "bytes_by_group": {"code": 83_000}, "train_seconds": 2.9, "eval_seconds": eval_seconds,
            "quant_gap_bpb": 0.01, "allocation": "knapsack", "config": config_to_dict(config), "reports": [[1, bpb + 0.2]]}


@pytest.fixture(scope="module")
def three_kinds(tmp_path_factory):
    """A micro-space study of four trials told through the coordinator: rejected before training; trained
    but no allocation fits; complete and feasible; complete but over the eval-time cap."""
    directory = tmp_path_factory.mktemp("dash")
    space = load_space(MICRO_SPACE)
    settings = StudySettings(name="dash", space={}, space_source=MICRO_SPACE, storage=f"sqlite:///{directory}/study.db", trials=4)
    study = open_study(settings, startup_trials=3, create=True)
    coordinator = Coordinator(str(directory), settings, space, study, data=None, device="cpu", out=io.StringIO())

    def ask():
        trial = study.ask()
        return trial, suggest_config(space, trial)[0]

    caps = space.caps
    trial, config = ask()
    coordinator.reject(trial, config, caps.artifact_bytes + 5_000)
    trial, config = ask()
    trial.report(4.2, 1)  # as the trial process does in a single-objective study
    coordinator.record_complete(trial, str(directory), {"status": "infeasible", "reason": "no allowed allocation fits the byte cap",
                                                       "metrics": {"train_seconds": 2.9, "reports": [[1, 4.2]]}})
    for bpb, eval_seconds in ((3.9, 5.0), (3.8, caps.eval_seconds + 10)):
        trial, config = ask()
        coordinator.record_complete(trial, str(directory), {"status": "complete", "metrics": _metrics(config, bpb, 120_000, eval_seconds)})
    return settings, caps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def dashboard(three_kinds):
    settings, _ = three_kinds
    port = _free_port()
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "optuna-dashboard"), settings.storage,
                               "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                studies = _get(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"optuna-dashboard did not start: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.3)
        yield base, next(s["study_id"] for s in studies if s["study_name"] == settings.name)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_dashboard_shows_names_states_and_constraints(dashboard, three_kinds):
    base, study_id = dashboard
    _, caps = three_kinds
    detail = _get(f"{base}/api/studies/{study_id}")
    assert detail["objective_names"] == ["val_bpb"]
    trials = sorted(detail["trials"], key=lambda t: t["number"])
    assert [t["state"] for t in trials] == ["Pruned", "Pruned", "Complete", "Complete"]
    rejected, infeasible, feasible, slow = trials
    attrs = [{a["key"]: a["value"] for a in t["user_attrs"]} for t in trials]
    assert [a["stage"] for a in attrs] == ["rejected", "infeasible", "complete", "complete"]
    # The dashboard greys a trial with a positive constraint; the list follows CONSTRAINT_KEYS.
    assert rejected["constraints"] == [5_000.0, -caps.train_seconds, -caps.eval_seconds]
    assert infeasible["constraints"][0] > 0 and slow["constraints"][2] == 10.0
    assert all(v <= 0 for v in feasible["constraints"])
    # Its trial page lists user attributes, not constraints: the named values are there too.
    assert json.loads(attrs[0]["constraints"]) == dict(zip(CONSTRAINT_KEYS, rejected["constraints"]))
    # No placeholder value: the rejected trial has none, the infeasible one its last training report.
    assert "values" not in rejected and infeasible["values"] == [4.2]
    assert feasible["values"] == [3.9] and slow["values"] == [3.8]
    importances = _get(f"{base}/api/studies/{study_id}/param_importances")["param_importances"]
    assert len(importances) == 1 and {i["name"] for i in importances[0]} <= {p["name"] for p in feasible["params"]}


def test_project_views_rank_only_trained_feasible_trials(three_kinds):
    from search.coordinator import best_feasible
    from search.outputs.pages import scored_trials
    from search.outputs.status import trial_rows

    settings, _ = three_kinds
    study = open_study(settings, startup_trials=3, create=False)
    assert [r["state"] for r in trial_rows(study)] == ["rejected", "infeasible", "complete", "complete"]
    assert [r["feasible"] for r in trial_rows(study)] == [False, False, True, False]
    assert [t.number for t in scored_trials(study)] == [2, 3] and best_feasible(study).number == 2
    assert study.best_trial.number == 2 and study.metric_names == ["val_bpb"]
    for t in study.trials:
        assert set(named_constraints(t)) == set(CONSTRAINT_KEYS)


def test_pruned_infeasible_trials_steer_tpe_as_complete_ones_did():
    """TPE files a trial with a positive constraint as "bad" whatever its state and value, so PRUNED trials
    with constraints steer it exactly as COMPLETE ones with a placeholder value did; FAIL ones it ignores."""

    caps = Caps(artifact_bytes=700)

    def constrain(trial, constraints):
        for key, value in constraints.items():
            trial.set_constraint(key, value)

    def proposals(tell_over_cap: str) -> list:
        study = optuna.create_study(sampler=make_sampler("tpe", 0, "bpb", 8))
        points = []
        for _ in range(40):
            trial = study.ask()
            x, y = trial.suggest_float("x", 0, 1), trial.suggest_int("y", 1, 8)
            points.append((x, y))
            # Bigger is better but over the cap beyond a line: the best configs sit right at the boundary.
            constraints = constraint_values(Outcome(math.nan, round(1_000 * (x + y / 16)), 0.0, 0.0), caps)
            if constraints["artifact_bytes"] <= 0:
                constrain(trial, constraints)
                study.tell(trial, 1 - x - y / 20)
            elif tell_over_cap == "pruned":
                tell_unscored(study, trial, constraints)
            elif tell_over_cap == "placeholder":
                constrain(trial, constraints)
                study.tell(trial, 99.0)
            else:
                study.tell(trial, state=TrialState.FAIL)
        return points

    over = lambda points: sum(1_000 * (x + y / 16) > 700 for x, y in points[8:])
    pruned, placeholder, failed = proposals("pruned"), proposals("placeholder"), proposals("fail")
    assert pruned == placeholder
    assert over(pruned) <= 12 < 20 <= over(failed)  # of the 32 proposals after the 8 random ones
