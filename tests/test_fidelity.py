"""Multi-fidelity rules (search/budget/fidelity.py): rungs, non-dominated promotion, pruners built from the space."""

import os

import optuna
import pytest

import dataclasses

from search.budget.fidelity import OPTUNA, PARETO, PRUNERS, PrunerSpec, front_ranks, pareto_reporter, promoted
from space.spec import PRUNERS as SPACE_PRUNERS, SpaceError, load_space, space_from_dict

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "space", "presets", "demo.toml")


def demo_with(search: dict):
    import tomllib

    with open(DEMO, "rb") as f:
        data = tomllib.load(f)
    data["search"] = search
    return space_from_dict(data, source=DEMO)


def test_fronts_and_promotion_by_non_dominated_rank():
    points = [(1.0, 10), (2.0, 5), (1.5, 12), (3.0, 20)]
    assert front_ranks(points) == [0, 0, 1, 2]
    # Of four at a rung, eta 2 keeps two: the front's two points, the dominated ones stop.
    assert promoted((1.0, 10), points[1:], 2) and promoted((2.0, 5), [points[0]] + points[2:], 2)
    assert not promoted((1.5, 12), [points[0], points[1], points[3]], 2)
    assert promoted((9.0, 99), [], 3)  # the first to reach a rung goes on


def test_rungs_follow_the_reduction_factor():
    spec = PrunerSpec("successive_halving", "bpb", min_resource=2, max_resource=20, reduction_factor=3, min_seconds=0.0)
    assert [r for r in range(1, 20) if spec.is_rung(r)] == [2, 6, 18]


def test_the_space_names_the_pruner_and_its_budgets():
    spec = PrunerSpec.of(demo_with({"pruner": "successive_halving", "min_seconds": 20.0, "reduction_factor": 2}), "bpb")
    assert spec.min_resource == 2 and spec.max_resource == 4  # reports every 10 s of a 40 s cap
    assert isinstance(spec.optuna_pruner(), optuna.pruners.SuccessiveHalvingPruner) and spec.mechanism == OPTUNA
    assert isinstance(dataclasses.replace(spec, pruner="hyperband").optuna_pruner(), optuna.pruners.HyperbandPruner)
    pareto = dataclasses.replace(spec, objectives="bpb,bytes")
    assert isinstance(pareto.optuna_pruner(), optuna.pruners.NopPruner) and pareto.mechanism == PARETO  # pareto_reporter
    default = PrunerSpec.of(load_space("demo"), "bpb")
    assert default.pruner == "median" and isinstance(default.optuna_pruner(), optuna.pruners.MedianPruner)
    for bad, message in (({"pruner": "asha"}, "search.pruner must be one of"), ({"reduction_factor": 1}, "reduction_factor"),
                         ({"rerun_seeds": 0}, "rerun_seeds"), ({"budget": 3}, "unknown key")):
        with pytest.raises(SpaceError, match=message):
            demo_with(bad)


def test_every_pruner_a_space_may_name_has_one_rule_and_one_mechanism():
    assert set(PRUNERS) == set(SPACE_PRUNERS)
    spec = PrunerSpec("none", "bpb", min_resource=1, max_resource=4, reduction_factor=3, min_seconds=0.0)
    mechanisms = {(name, objectives): dataclasses.replace(spec, pruner=name, objectives=objectives).mechanism
                  for name in PRUNERS for objectives in ("bpb", "bpb,bytes")}
    assert mechanisms == {("median", "bpb"): "optuna", ("median", "bpb,bytes"): "none",  # Optuna prunes one objective only
                          ("successive_halving", "bpb"): "optuna", ("successive_halving", "bpb,bytes"): "pareto",
                          ("hyperband", "bpb"): "optuna", ("hyperband", "bpb,bytes"): "pareto",
                          ("none", "bpb"): "none", ("none", "bpb,bytes"): "none"}


def test_successive_halving_stops_a_trial_outside_the_best_third_at_its_rung(tmp_path):
    from search.trialfiles import _reporter

    spec = {"pruner": "successive_halving", "objectives": "bpb", "min_resource": 1, "max_resource": 4, "reduction_factor": 3,
            "min_seconds": 0.0}
    storage = f"sqlite:///{tmp_path}/study.db"
    study = optuna.create_study(study_name="p", storage=storage, pruner=PrunerSpec(**spec).optuna_pruner())
    for value in (1.0, 1.1, 1.2):
        done = study.ask()
        done.report(value, 1)
        study.tell(done, value)
    good, bad = study.ask(), study.ask()
    _reporter({"pruner": spec, "study": "p", "storage": storage, "trial_id": good._trial_id})(1, 0.9)
    with pytest.raises(optuna.TrialPruned):
        _reporter({"pruner": spec, "study": "p", "storage": storage, "trial_id": bad._trial_id})(1, 1.5)


def test_a_pareto_study_promotes_by_front(tmp_path):
    spec = PrunerSpec("successive_halving", "bpb,bytes", min_resource=1, max_resource=4, reduction_factor=2, min_seconds=0.0)
    study = optuna.create_study(study_name="q", storage=f"sqlite:///{tmp_path}/q.db", directions=["minimize", "minimize"])
    trials = []
    for predicted in (100, 200, 300):
        t = study.ask()
        t.set_user_attr("predicted_min_bytes", predicted)
        trials.append(t)
    pareto_reporter(trials[0], spec)(1, 2.0)  # alone at the rung: on
    pareto_reporter(trials[1], spec)(1, 1.0)  # cheaper in bpb, dearer in bytes: also on the front
    with pytest.raises(optuna.TrialPruned, match="non-dominated rank"):
        pareto_reporter(trials[2], spec)(1, 2.5)  # dominated by both


def test_a_fixed_compute_proxy_study_reports_its_extrapolation(tmp_path):
    import json

    from test_search import load, micro_with, search

    space = micro_with(tmp_path, "micro_proxy.toml", '\n[search]\nproxy_steps = 20\ntarget_steps = 80\ngap_growth = 0.5\n')
    result = search("run", "--space", space, "--study", "x", "--trials", "1", results=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    trial = load(tmp_path, "x").trials[0]
    metrics = json.loads((tmp_path / "x" / "trials" / "0000" / "metrics.json").read_text())
    assert metrics["steps"] == 20 and metrics["config"]["train"]["max_wallclock_seconds"] == 0.0
    assert metrics["target_steps"] == 80 and trial.user_attrs["extrapolated_bpb"] == metrics["extrapolated_bpb"]
    assert len(metrics["reports"]) >= 2  # every 2 steps
    status = search("status", "x", results=tmp_path)
    assert "@target" in status.stdout and f"{metrics['extrapolated_bpb']:.4f}" in status.stdout


def test_proxy_budgets_are_checked():
    for bad, message in (({"proxy_steps": 50, "target_steps": 40}, "below target_steps"),
                         ({"proxy_steps": 5, "target_steps": 50, "proxy_seconds": 10.0}, "not both"),
                         ({"proxy_seconds": 40.0}, "below the target budget")):
        with pytest.raises(SpaceError, match=message):
            demo_with(bad)
