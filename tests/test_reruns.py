"""Noise-aware ranking (search/budget/reruns.py) and the step check of re-runs (search/submit/confirm.py)."""

import json
import os

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from pgolf.metrics import RunMetrics
from search.submit.confirm import step_comparison
from search.budget.reruns import RERUN_ATTR, SEED_ATTR, best_configuration, configurations, queue_reruns, ranking_lines
from test_search import load, micro_with, search

FEASIBLE = {"constraints:artifact_bytes": -1.0, "constraints:train_seconds": -1.0, "constraints:eval_seconds": -1.0}


def scored(study, width: int, bpb: float, **attrs):
    study.add_trial(create_trial(params={"model.model_dim": width}, distributions={"model.model_dim": CategoricalDistribution([32, 48, 64])},
                                 value=bpb, user_attrs={"stage": "complete", "config": {"train": {"seed": 1337}}, **attrs},
                                 system_attrs=FEASIBLE))


def test_the_best_configurations_are_queued_once_and_ranked_by_their_mean(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db")
    for width, bpb in ((32, 2.50), (48, 2.49), (64, 2.70)):
        scored(study, width, bpb)
    assert queue_reruns(study, top=2, seeds=2) == 4 and queue_reruns(study, top=2, seeds=2) == 0
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted((t.system_attrs["fixed_params"]["model.model_dim"], t.user_attrs[SEED_ATTR]) for t in waiting) == [(32, 2337), (32, 3337), (48, 2337), (48, 3337)]
    # 48's first seed was lucky: over three seeds 32 is better, and the ranking says it changed.
    for width, values in ((32, (2.51, 2.49)), (48, (2.55, 2.56))):
        for seed, bpb in zip((2337, 3337), values):
            scored(study, width, bpb, **{RERUN_ATTR: 0 if width == 32 else 1, SEED_ATTR: seed})
    best = best_configuration(study)
    assert best.original.number == 0 and len(best.trials) == 3 and abs(best.mean - 2.50) < 1e-9
    assert {c.original.number: len(c.trials) for c in configurations(study)} == {0: 3, 1: 3, 2: 1}
    lines = ranking_lines(study)
    assert lines[-1] == "the ranking changed with the re-runs" and " 2.5000 " in lines[2]


def test_a_rerun_that_trained_materially_fewer_steps_is_flagged():
    rows = step_comparison(124, 40.0, [RunMetrics(steps=29, train_seconds=40.0), RunMetrics(steps=120, train_seconds=39.0)])
    assert [r["differs"] for r in rows] == [True, False]
    assert round(rows[0]["step_ms"]) == 1379 and round(rows[0]["original_step_ms"]) == 323


@pytest.mark.slow  # ~30 s; re-runs are also exercised by the README first-session test
def test_a_study_reruns_its_best_configuration_and_times_every_phase(tmp_path):
    space = micro_with(tmp_path, "micro_reruns.toml", '\n[search]\nrerun_top = 1\nrerun_seeds = 1\n')
    result = search("run", "--space", space, "--study", "r", "--trials", "2", results=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    study = load(tmp_path, "r")
    reruns = [t for t in study.trials if RERUN_ATTR in t.user_attrs]
    assert len(reruns) == 1 and reruns[0].state == TrialState.COMPLETE
    original = study.trials[reruns[0].user_attrs[RERUN_ATTR]]
    assert reruns[0].params == original.params
    seeds = [json.loads((tmp_path / "r" / "trials" / f"{t.number:04d}" / "metrics.json").read_text())["config"]["train"]["seed"]
             for t in (original, reruns[0])]
    assert seeds[1] == seeds[0] + 1000
    request = json.loads((tmp_path / "r" / "trials" / f"{reruns[0].number:04d}" / "request.json").read_text())
    assert request["pruner"] is None  # a re-run measures noise: never stopped early
    metrics = json.loads((tmp_path / "r" / "trials" / f"{original.number:04d}" / "metrics.json").read_text())
    phases = metrics["phases"]
    assert {"start-up", "training", "validation reports", "pre-quant score", "allocation: confirm"} <= set(phases)
    assert 0 < sum(phases.values()) <= (original.datetime_complete - original.datetime_start).total_seconds()
    assert "val_bpb_pre" not in metrics and metrics["subset_tokens"] == 2048 and "quant_gap_bpb" in metrics
    # The sampler (unseeded) may have drawn the original's configuration again: that trial is one more seed of it.
    seeds_of_it = sum(t.params == original.params for t in study.trials if t.state == TrialState.COMPLETE)
    status = search("status", "r", results=tmp_path)
    assert "configurations re-run with new seeds" in status.stdout and f"over {seeds_of_it} seeds" in status.stdout, status.stdout
    assert os.path.isdir(tmp_path / "r" / "trials" / f"{reruns[0].number:04d}")


def test_selection_is_stated_and_confirm_seeds_are_ones_the_study_never_used(tmp_path):
    from search.budget.selection import fresh_seeds, selection_summary, selection_text, seeds_used

    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db")
    for width, bpb in ((32, 2.50), (48, 2.49), (64, 2.70)):
        scored(study, width, bpb)
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"model.model_dim": 64}, user_attrs={"stage": "pruned"},
                                 distributions={"model.model_dim": CategoricalDistribution([32, 48, 64])}))
    for seed, bpb in ((1, 2.51), (2, 2.49)):  # re-runs whose seeds happen to be 1 and 2: confirm must skip them
        scored(study, 32, bpb, **{RERUN_ATTR: 0, SEED_ATTR: seed})
    assert seeds_used(study) == {1, 2, 1337}
    assert fresh_seeds(study, 3) == [3, 4, 5] and fresh_seeds(study, 2, also_avoid={3}) == [4, 5]
    summary = selection_summary(study, study.trials[0])
    assert (summary["trials"], summary["configurations"], summary["originals"]) == (6, 3, 4)
    assert summary["by_stage"] == {"complete": 5, "pruned": 1} and summary["seeds_per_rerun"] == [3]
    assert summary["exported_is_best"] and summary["exported_seeds"] == 3
    text = selection_text(summary)
    assert "from 3 configurations in 6 trials" in text and "mean over 3 seeds" in text and "none of its trials used" in text
    assert "picked by hand" in selection_text(selection_summary(study, study.trials[2]))
