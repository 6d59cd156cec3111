"""Greedy forward selection (search/greedy.py): the visiting order, keeping the best, failed and infeasible trials
counting as worse, resuming in the middle from the storage alone, and `search run --sampler greedy` on a script study."""

import json
import math
import os

import optuna
import pytest

from search.cli import main as search_main
from search.greedy import POINT_KEY, GreedyPlan, GreedySampler, grid
from space.core import Dimension, suggest_value

HERE = os.path.dirname(os.path.abspath(__file__))

DIMS = [Dimension(key="A", choices=[1, 2, 3]), Dimension(key="B", low=0.0, high=1.0), Dimension(key="C", low=8, high=64, log=True)]


def objective_from(table):
    """An objective over DIMS whose value is the sum of each variable's entry in `table`."""
    def objective(trial):
        point = {d.key: suggest_value(trial, d) for d in DIMS}
        return sum(table[name].get(value, 0.0) for name, value in point.items())
    return objective


def points(study):
    return [tuple(t.params[d.key] for d in DIMS) for t in sorted(study.trials, key=lambda t: t.number)]


def test_grid_takes_choices_or_three_points_of_a_range():
    assert grid(DIMS[0]) == [1, 2, 3]
    assert grid(DIMS[1]) == [0.0, 0.5, 1.0]
    assert grid(DIMS[2]) == [8, 23, 64]  # geometric middle, rounded for an int range
    assert grid(Dimension(key="D", low=0, high=10, step=4)) == [0, 4, 8]


def test_visiting_order_and_keeping_the_best():
    # A=3 and B=0.0 and C=64 are best; each stage must keep its best and the next stage start from it.
    table = {"A": {1: 0.3, 2: 0.2, 3: 0.1}, "B": {0.0: 0.0, 0.5: 0.5, 1.0: 1.0}, "C": {8: 0.3, 23: 0.2, 64: 0.0}}
    study = optuna.create_study(sampler=GreedySampler(DIMS, seed=0))
    study.optimize(objective_from(table), n_trials=7)
    assert points(study) == [
        (2, 0.5, 23),  # the centre starts the plan (no baseline enqueued)
        (1, 0.5, 23), (3, 0.5, 23),  # stage A; A=3 kept
        (3, 0.0, 23), (3, 1.0, 23),  # stage B from the incumbent; B=0.0 kept
        (3, 0.0, 8), (3, 0.0, 64),  # stage C
    ]
    assert study.best_trial.params == {"A": 3, "B": 0.0, "C": 64}


def test_a_converged_plan_samples_at_random():
    # the centre is best everywhere: one pass with no move, then random points (not on the plan)
    table = {"A": {1: 1.0, 3: 1.0}, "B": {0.0: 1.0, 1.0: 1.0}, "C": {8: 1.0, 64: 1.0}}
    study = optuna.create_study(sampler=GreedySampler(DIMS, seed=0))
    study.optimize(objective_from(table), n_trials=9)
    assert points(study)[:7] == [(2, 0.5, 23), (1, 0.5, 23), (3, 0.5, 23), (2, 0.0, 23), (2, 1.0, 23), (2, 0.5, 8), (2, 0.5, 64)]
    assert all(t.system_attrs[POINT_KEY] == {} for t in study.trials[7:])  # no plan point: random


def test_failed_and_infeasible_trials_count_as_worse():
    # A=1 has the lowest value but is over a cap (infeasible); A=3 crashes: the incumbent A=2 stays.
    def objective(trial):
        point = {d.key: suggest_value(trial, d) for d in DIMS}
        if point["A"] == 3:
            raise RuntimeError("trial crashed")
        trial.set_constraint("bytes", 1.0 if point["A"] == 1 else -1.0)  # as objectives/constraints.py records them
        return 0.0 if point["A"] == 1 else 1.0

    study = optuna.create_study(sampler=GreedySampler(DIMS, seed=0))
    study.optimize(objective, n_trials=4, catch=(RuntimeError,))
    assert [t.state.name for t in study.trials[:3]] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert points(study)[3] == (2, 0.0, 23)  # stage B runs from A=2


def test_an_enqueued_baseline_starts_the_plan():
    table = {"A": {1: 0.0, 2: 1.0, 3: 1.0}, "B": {}, "C": {}}
    study = optuna.create_study(sampler=GreedySampler(DIMS, seed=0))
    study.enqueue_trial({"A": 3, "B": 0.25})  # off the grid, and C left to the sampler
    study.optimize(objective_from(table), n_trials=4)
    assert points(study) == [(3, 0.25, 23), (1, 0.25, 23), (2, 0.25, 23), (1, 0.0, 23)]


def test_resume_in_the_middle_continues_the_same_plan(tmp_path):
    table = {"A": {1: 0.3, 2: 0.2, 3: 0.1}, "B": {0.0: 0.0, 1.0: 1.0}, "C": {8: 0.3, 64: 0.0}}
    whole = optuna.create_study(sampler=GreedySampler(DIMS, seed=0))
    whole.optimize(objective_from(table), n_trials=7)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = optuna.create_study(study_name="g", storage=storage, sampler=GreedySampler(DIMS, seed=0))
    first.optimize(objective_from(table), n_trials=4)  # stops inside stage B
    del first
    resumed = optuna.load_study(study_name="g", storage=storage, sampler=GreedySampler(DIMS, seed=1))  # a fresh sampler
    resumed.optimize(objective_from(table), n_trials=3)
    assert points(resumed) == points(whole)


def test_next_point_skips_what_ran_and_moves_only_on_improvement():
    plan = GreedyPlan(DIMS[:2])
    start = {"A": 2, "B": 0.5}
    history = [(start, 1.0), ({"A": 1, "B": 0.5}, math.inf), ({"A": 3, "B": 0.5}, 1.0)]  # a tie keeps the incumbent
    assert plan.next_point(history) == {"A": 2, "B": 0.0}
    history += [({"A": 2, "B": 0.0}, 1.0), ({"A": 2, "B": 1.0}, 1.0)]
    assert plan.next_point(history) is None


def test_search_run_with_the_greedy_sampler_on_a_script_study(tmp_path, capsys):
    results = tmp_path / "results"
    space = os.path.join(HERE, "spaces", "script_official.toml")  # MATRIX_LR choices, then MODEL_DIM 32..96 step 32
    assert search_main(["run", "--space", space, "--study", "g", "--sampler", "greedy", "--trials", "4",
                        "--results", str(results)]) == 0, capsys.readouterr().err
    settings = json.loads((results / "g" / "study.json").read_text())
    assert settings["sampler"] == "greedy"
    trials = optuna.load_study(study_name="g", storage=settings["storage"]).get_trials()
    lrs = [t.params["MATRIX_LR"] for t in trials]
    dims = [t.params["MODEL_DIM"] for t in trials]
    # trial 0 is the baseline (the script's own defaults: 0.04, 64); stage MATRIX_LR tries its other choices at 64
    assert lrs[:3] == [0.04, 0.0005, 0.02] and dims[:3] == [64, 64, 64], (lrs, dims)
    assert dims[3] in (32, 96), dims


@pytest.mark.parametrize("sampler", ["greedy"])
def test_the_sampler_family_is_one_table(sampler):
    from search.samplers import SAMPLERS, make_sampler

    assert sampler in SAMPLERS and isinstance(make_sampler(sampler, 0, "bpb", 3, lambda: DIMS), GreedySampler)
