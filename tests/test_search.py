"""Studies end to end on the real data, with a space whose trials take seconds (tests/spaces/micro.toml)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from conftest import run_cli, require_data
from objectives.constraints import named_constraints

MICRO = os.path.join(os.path.dirname(__file__), "spaces", "micro.toml")


def micro_with(folder, name: str, append: str = "", replace: tuple[str, str] | None = None) -> str:
    """A copy of the micro space in `folder` with a table appended and/or one line replaced."""
    with open(MICRO, encoding="utf-8") as f:
        text = f.read()
    if replace:
        assert replace[0] in text, replace
        text = text.replace(*replace)
    path = os.path.join(str(folder), name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + append)
    return path


def search(*args, results):
    return run_cli("search.cli", *args, "--results", str(results))


def load(results, name):
    settings = json.loads((results / name / "study.json").read_text())
    return optuna.load_study(study_name=name, storage=_storage(settings["storage"]))


def _storage(url):
    from search.study import open_storage

    return open_storage(url)


def finished(study):
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def test_run_then_status(tmp_path):
    result = search("run", "--space", MICRO, "--study", "s", "--trials", "2", results=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    study = load(tmp_path, "s")
    assert len(finished(study)) == 2
    first = study.trials[0]
    assert first.user_attrs.get("baseline") and first.params["model.model_dim"] == 32
    for t in finished(study):
        if t.state == TrialState.COMPLETE and t.user_attrs["stage"] == "complete":
            folder = tmp_path / "s" / "trials" / f"{t.number:04d}"
            metrics = json.loads((folder / "metrics.json").read_text())
            assert metrics["artifact_bytes"] == (folder / "final_model.pgolf").stat().st_size + (folder / "train_gpt.py").stat().st_size
            assert set(named_constraints(t)) == {"artifact_bytes", "train_seconds", "eval_seconds"}
            assert t.values[0] == metrics["val_bpb_post"]
    status = search("status", "s", results=tmp_path)
    assert status.returncode == 0 and "best feasible" in status.stdout and "baseline" in status.stdout
    assert "ran on" not in status.stdout  # one host, no GPU: nothing to tell apart


def test_kill_9_mid_trial_then_resume(tmp_path):
    require_data()
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "run", "--space", MICRO, "--study", "k", "--trials", "3",
                             "--sampler-seed", "0", "--results", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trials = tmp_path / "k" / "trials"
    deadline = time.time() + 300
    # Wait until trial 0 is done and trial 1 is training, then kill the study process.
    while time.time() < deadline and proc.poll() is None:
        if (trials / "0000").exists() and any(p.name.startswith(".0001.partial") for p in trials.iterdir()):
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("trial 1 never started training (rejected by the byte predictor, or the study failed)")
    time.sleep(1.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = load(tmp_path, "k")
    completed_before = {t.number: t.values for t in before.trials if t.state == TrialState.COMPLETE}
    assert 0 in completed_before and before.trials[1].state == TrialState.RUNNING

    result = search("resume", "k", results=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    after = load(tmp_path, "k")
    assert {n: v for n, v in completed_before.items()} == {t.number: t.values for t in after.trials if t.number in completed_before}
    assert after.trials[1].state == TrialState.FAIL
    rerun = [t for t in after.trials if t.user_attrs.get("retry_of") == 1]
    assert len(rerun) == 1 and rerun[0].params == after.trials[1].params and rerun[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert len(finished(after)) == 3
    assert not [p for p in trials.iterdir() if ".partial" in p.name]


@pytest.mark.parametrize("storage", ["journal", pytest.param("postgres", marks=pytest.mark.slow)])  # postgres: ~27 s
def test_two_concurrent_processes_share_one_study(tmp_path, storage, request):
    # A journal file (several processes on one machine) or a real PostgreSQL server (several machines).
    url = f"journal:///{tmp_path}/shared.log" if storage == "journal" else request.getfixturevalue("postgres_url")
    first = subprocess.Popen([sys.executable, "-m", "search.cli", "run", "--space", MICRO, "--study", "c", "--trials", "4",
                              "--storage", url, "--results", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while not (tmp_path / "c" / "study.json").exists() and first.poll() is None:
        time.sleep(0.1)
    second = subprocess.Popen([sys.executable, "-m", "search.cli", "resume", "c", "--results", str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    study = load(tmp_path, "c")
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    assert len(finished(study)) == 4 and not [t for t in study.trials if t.state == TrialState.RUNNING]
    dirs = sorted(p.name for p in (tmp_path / "c" / "trials").iterdir())
    assert dirs == sorted(f"{t.number:04d}" for t in study.trials if t.user_attrs.get("stage") != "rejected")
    # Both processes ran trials: the work was shared, not duplicated.
    owners = {t.user_attrs["owner"] for t in study.trials}
    assert len(owners) == 2


def one_error_line(result, pattern):
    import re

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(pattern, lines[0]), result.stderr


def test_bad_inputs_are_clear_and_keep_what_is_stored(tmp_path):
    bad_space = tmp_path / "bad.toml"
    bad_space.write_text('[dims."model.depth"]\nlow = 1\nhigh = 2\n')
    one_error_line(search("run", "--space", str(bad_space), results=tmp_path), r"'model.depth' is not a config key")
    one_error_line(search("run", "--space", MICRO, "--storage", "nosuch://x", "--study", "u", results=tmp_path), r"cannot open storage nosuch://x")
    assert not (tmp_path / "u").exists()
    tight = tmp_path / "tight.toml"
    tight.write_text(re.sub(r"artifact_bytes = [\d_]+", "artifact_bytes = 20_000", open(MICRO).read()))
    one_error_line(search("run", "--space", str(tight), results=tmp_path), r"no configuration of space 'micro' can meet the 20,000-byte cap")
    one_error_line(search("resume", "nosuch", results=tmp_path), r"no study 'nosuch'")

    assert search("run", "--space", MICRO, "--study", "keep", "--trials", "1", results=tmp_path).returncode == 0
    before = (tmp_path / "keep" / "study.json").read_text()
    one_error_line(search("run", "--space", MICRO, "--study", "keep", results=tmp_path), r"already exists")
    assert (tmp_path / "keep" / "study.json").read_text() == before and len(finished(load(tmp_path, "keep"))) == 1


def test_trial_process_prunes_with_the_studys_pruner(tmp_path):
    # The worker loads the study itself; Optuna does not store the pruner, so it must be given again.
    from search.budget.fidelity import PrunerSpec
    from search.trialfiles import _reporter

    spec = {"pruner": "median", "objectives": "bpb", "min_resource": 1, "max_resource": 4, "reduction_factor": 3, "min_seconds": 0.0}
    storage = f"sqlite:///{tmp_path}/study.db"
    study = optuna.create_study(study_name="p", storage=storage, pruner=PrunerSpec(**spec).optuna_pruner())
    for value in (1.0, 1.1):
        done = study.ask()
        done.report(value, 1)
        done.report(value, 2)
        study.tell(done, value)
    trial = study.ask()
    on_val = _reporter({"pruner": spec, "study": "p", "storage": storage, "trial_id": trial._trial_id})
    on_val(1, 9.0)  # never on the first report, however bad
    with pytest.raises(optuna.TrialPruned):
        on_val(2, 9.0)
