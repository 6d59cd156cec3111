"""Training caps in a reference machine's seconds: the step-time model, the reference machines, each trial's step
budget, and a study whose speed ratio is measured once (search/budget/stepbudget.py, search/budget/references.py)."""

import json
import os
import tomllib

import optuna
import pytest

from conftest import run_cli, small_config
from objectives.constraints import named_constraints
from search.budget.references import REFERENCE_MACHINES, reference_machine
from search.budget.stepbudget import (CALIBRATION_FILE, SpeedCalibration, StepTimeModel, budget_config, calibrate,
                                      flops_per_step, flops_per_token, reference_train_seconds, submission_config)
from space.spec import SpaceError, space_from_dict

MICRO = os.path.join(os.path.dirname(__file__), "spaces", "micro.toml")
# A reference "machine" defined by a table: two micro shapes and the step times it published for them. Slow figures
# keep the budgets small (the 3 s cap at ~0.5 s per reference step is a few steps whatever this machine's speed).
TABLE = """name = "table"
description = "a measured table"
[[shapes]]
label = "one layer"
config = "tiny"
set = { "model.num_layers" = 1, "model.model_dim" = 32, "model.num_heads" = 2, "model.num_kv_heads" = 1, "train.seq_len" = 64, "train.batch_tokens" = 1024 }
step_ms = 400.0
source = "a test's table"
[[shapes]]
label = "two layers"
config = "tiny"
set = { "model.num_layers" = 2, "model.model_dim" = 48, "model.num_heads" = 2, "model.num_kv_heads" = 1, "train.seq_len" = 64, "train.batch_tokens" = 1024 }
step_ms = 600.0
source = "a test's table"
"""


def micro_space(**caps) -> dict:
    with open(MICRO, "rb") as f:
        data = tomllib.load(f)
    data["caps"].update(caps)
    return data


def test_model_fits_and_flops_grow_with_the_shape():
    model = StepTimeModel.fit([(1e9, 0.1 + 2e-10 * 1e9), (3e9, 0.1 + 2e-10 * 3e9), (5e9, 0.1 + 2e-10 * 5e9)])
    assert model.a == pytest.approx(0.1) and model.b == pytest.approx(2e-10)
    # A negative intercept is no overhead: the fit goes through the origin instead.
    through = StepTimeModel.fit([(1e9, 0.05), (2e9, 0.2)])
    assert through.a == 0.0 and through.b > 0
    base = small_config()
    deeper = small_config(model={"num_layers": 3})
    looped = small_config(model={"num_layers": 3, "loop_repeats": 2, "loop_len": 1, "loop_start": 1})
    assert flops_per_token(base) < flops_per_token(deeper) < flops_per_token(looped)
    assert flops_per_step(base) == flops_per_token(base) * 1024


def test_the_challenge_machine_and_bad_references_are_one_line(tmp_path):
    machine = reference_machine("8xH100")
    assert machine is REFERENCE_MACHINES["8xH100"]
    baseline = machine.shapes[0]
    assert baseline.step_ms == 43.54 and "NaiveBaseline/train.log" in baseline.source
    assert baseline.run_config().train.batch_tokens == 524288
    space = space_from_dict(micro_space(train_reference="8xH100"), source=MICRO)
    assert space.caps.train_reference == "8xH100"
    with pytest.raises(SpaceError, match="neither a known reference machine"):
        space_from_dict(micro_space(train_reference="4xA100"), source=MICRO)
    empty = tmp_path / "empty.toml"
    empty.write_text('name = "nothing"\n')
    with pytest.raises(SpaceError, match="no way to measure the speed ratio"):
        space_from_dict(micro_space(train_reference=str(empty)), source=MICRO)
    bad = tmp_path / "bad.toml"
    bad.write_text(TABLE.replace("step_ms = 400.0", "step_ms = 0"))
    with pytest.raises(SpaceError, match="step_ms must be a positive number"):
        space_from_dict(micro_space(train_reference=str(bad)), source=MICRO)
    unknown_key = tmp_path / "key.toml"
    unknown_key.write_text(TABLE.replace('"model.num_layers" = 1', '"model.layers" = 1'))
    with pytest.raises(SpaceError, match="'model.layers' is not a config key"):
        space_from_dict(micro_space(train_reference=str(unknown_key)), source=MICRO)
    with_proxy = micro_space(train_reference="8xH100")
    with_proxy["search"] = {"proxy_steps": 10, "target_steps": 100}
    with pytest.raises(SpaceError, match="not both"):
        space_from_dict(with_proxy, source=MICRO)
    script = {"script": {"path": "x.py"}, "caps": {"train_reference": "8xH100"}}
    with pytest.raises(SpaceError):
        space_from_dict(script, source=MICRO)
    # Off by default: the caps of a space without the key are as before.
    assert space_from_dict(micro_space(), source=MICRO).caps.train_reference == ""


def test_budget_is_the_cap_over_the_predicted_reference_step():
    calibration = SpeedCalibration("table", "", [{"label": "x", "step_ms": 10.0, "source": "s", "ratio": 0.5}], [], a=0.01,
                                   b=1e-10, ratio=0.5)
    config = small_config(train={"iterations": 100000, "max_wallclock_seconds": 3.0, "reserve_seconds": 0.5})
    step = 0.5 * (0.01 + 1e-10 * flops_per_step(config))
    budgeted, record = budget_config(config, calibration, cap_seconds=3.0)
    assert record["steps"] == int(2.5 / step) and budgeted.train.iterations == record["steps"]
    assert budgeted.train.max_wallclock_seconds == 0.0 and record["reference_step_ms"] == pytest.approx(1000 * step)
    assert record["figures"] == [{"label": "x", "step_ms": 10.0, "source": "s"}] and record["ratio"] == 0.5
    shipped = submission_config(budgeted, record)
    assert shipped.train.iterations == 100000 and shipped.train.max_wallclock_seconds == 3.0
    assert reference_train_seconds(record, record["steps"], 2.0) == pytest.approx(record["steps"] * step + 1.0)
    # The step count never exceeds the config's own iterations.
    few = small_config(train={"iterations": 3, "max_wallclock_seconds": 3.0})
    assert budget_config(few, calibration, cap_seconds=3.0)[1]["steps"] == 3


def test_probes_time_real_training_and_give_the_ratio(tmp_path):
    path = tmp_path / "table.toml"
    path.write_text(TABLE)
    machine = reference_machine(str(path))
    calibration = calibrate(machine, [("bigger", small_config(model={"num_layers": 3}))], "cpu", threads=1, log=lambda m: None, steps=4)
    assert [p["label"] for p in calibration.probes] == ["one layer", "two layers", "bigger"]
    assert all(p["step_ms"] > 0 and p["tokens_per_step"] == 1024 for p in calibration.probes)
    ratios = [f["ratio"] for f in calibration.figures]
    assert min(ratios) <= calibration.ratio <= max(ratios)
    assert calibration.b > 0 and calibration.fit_error["max"] >= calibration.fit_error["mean"] >= 0


@pytest.mark.slow  # ~25 s: a real calibration and three trials
@pytest.mark.timeout(900)  # a real calibration and three trials: minutes on a busy 2-core machine
def test_study_measures_once_trains_budgets_and_checks_reference_seconds(tmp_path):
    (tmp_path / "table.toml").write_text(TABLE)
    with open(MICRO, encoding="utf-8") as f:
        text = f.read()
    space = tmp_path / "space.toml"
    space.write_text(text.replace("eval_seconds = 60.0", 'eval_seconds = 60.0\ntrain_reference = "table.toml"'))
    results = tmp_path / "results"
    run = run_cli("search.cli", "run", "--space", str(space), "--study", "r", "--trials", "1", "--sampler-seed", "0",
                  "--results", str(results))
    assert run.returncode == 0, run.stderr + run.stdout
    stored = json.loads((results / "r" / CALIBRATION_FILE).read_text())
    assert stored["machine"] == "table" and stored["ratio"] > 0 and len(stored["probes"]) >= 3
    settings = json.loads((results / "r" / "study.json").read_text())
    from search.study import open_storage

    study = optuna.load_study(study_name="r", storage=open_storage(settings["storage"]))
    trained = [t for t in study.trials if "step_budget" in t.user_attrs]
    assert trained
    for t in trained:
        budget = t.user_attrs["step_budget"]
        request = json.loads((results / "r" / "trials" / f"{t.number:04d}" / "request.json").read_text())
        assert request["step_budget"]["steps"] == budget["steps"] == request["config"]["train"]["iterations"]
        assert request["config"]["train"]["max_wallclock_seconds"] == 0.0
        assert budget["trained_steps"] == t.user_attrs["steps"] == budget["steps"]
        assert budget["ratio"] == stored["ratio"] and budget["figures"][0]["source"] == "a test's table"
        if t.user_attrs.get("stage") == "complete":
            assert named_constraints(t)["train_seconds"] == pytest.approx(t.user_attrs["reference_train_seconds"] - 3.0)
            assert t.user_attrs["config"]["train"]["max_wallclock_seconds"] == pytest.approx(3.0)  # what a submission ships
    # A resume reuses the study's measurement.
    again = run_cli("search.cli", "resume", "r", "--trials", "2", "--results", str(results))
    assert again.returncode == 0, again.stderr + again.stdout
    assert "the study's calibration" in again.stdout
    assert json.loads((results / "r" / CALIBRATION_FILE).read_text())["measured_at"] == stored["measured_at"]
    report = run_cli("search.cli", "report", "r", "--results", str(results))
    assert report.returncode == 0, report.stderr
    page = (results / "r" / "report.html").read_text()
    assert "Step budget" in page and "a test&#x27;s table" in page


def test_bad_reference_fails_before_anything_is_stored(tmp_path):
    with open(MICRO, encoding="utf-8") as f:
        text = f.read()
    space = tmp_path / "space.toml"
    space.write_text(text.replace("eval_seconds = 60.0", 'eval_seconds = 60.0\ntrain_reference = "8xA100"'))
    run = run_cli("search.cli", "run", "--space", str(space), "--study", "bad", "--results", str(tmp_path / "results"))
    assert run.returncode != 0
    assert len(run.stderr.strip().splitlines()) == 1 and "8xA100" in run.stderr
    assert not (tmp_path / "results" / "bad").exists()


def test_confirm_compares_trained_with_predicted_steps():
    from pgolf.metrics import RunMetrics
    from search.submit.confirm import budget_check

    runs = [RunMetrics(steps=90, train_seconds=20.5, post_training_seconds=0.5), RunMetrics(steps=100, train_seconds=20.0)]
    check = budget_check({"machine": "8xH100", "reference_seconds": 20.0, "steps": 100, "reference_step_ms": 200.0}, runs)
    assert check["trained_steps"] == [90, 100] and check["predicted_steps"] == 100
    assert check["errors"] == [pytest.approx(100 / 90 - 1), 0.0]
    assert check["step_ms"] == [pytest.approx(20000 / 90), pytest.approx(200.0)]  # training alone, post-training left out
