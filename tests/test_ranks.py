"""Trials with N DDP ranks (search/ranks.py): a 2-rank trial on CPU (gloo) that is pruned, fails (a rank dies)
or is interrupted (Ctrl-C on `search run`) leaves no rank behind: the process table is read after each."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import DATA, MICRO_SPACE, require_data
from search.backends.local import LocalBackend
from search.coordinator import Coordinator
from search.runner import DataResolver
from search.study import StudySettings, open_study
from search.trialfiles import RESULT_FILE, read_reports
from space.spec import load_space
from test_interrupts import children


def two_rank_space(tmp_path) -> str:
    """The micro space with 2 ranks per trial and room for several validation reports before the cap."""
    with open(MICRO_SPACE, encoding="utf-8") as f:
        text = f.read()
    text = text.replace('device = "cpu"', 'device = "cpu"\nranks_per_trial = 2').replace("train_seconds = 3.0", "train_seconds = 60.0")
    text = text.replace("val_every_seconds = 1.0", "val_every_seconds = 0.3")
    path = tmp_path / "micro2.toml"
    path.write_text(text)
    return str(path)


def processes_naming(path: str) -> list[int]:
    """Processes whose command line names `path` (a trial's ranks all name its folder)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if entry.isdigit() and path.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            pass
    return found


def running(pid: int) -> bool:
    """`pid` is a live process (a killed rank whose parent was killed too is a zombie until init reaps it: dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait(condition, what: str, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"{what} never happened")


@pytest.fixture
def coordinator(tmp_path):
    space = load_space(two_rank_space(tmp_path))
    settings = StudySettings(name="ranks", space={}, space_source=space.source, storage=f"sqlite:///{tmp_path}/study.db",
                             trials=10, ranks_per_trial=2)
    study = open_study(settings, startup_trials=10, create=True)
    return Coordinator(str(tmp_path), settings, space, study, DataResolver(DATA), "cpu", out=io.StringIO())


def launch(coordinator):
    job, _ = coordinator.prepare_next()
    coordinator.backend._launch(job)
    wait(lambda: len(children(job.handle.pid)) == 1, "rank 1 starting")
    return job, children(job.handle.pid)[0]


def test_a_pruned_two_rank_trial_ends_both_ranks(coordinator):
    # Two finished trials that reported 0.0 at every step: the median pruner stops the next one once past its warm-up.
    for _ in range(2):
        trial = coordinator.study.ask()
        for step in range(1, 100):
            trial.report(0.0, step)
        coordinator.study.tell(trial, 0.0)
    job, rank1 = launch(coordinator)
    assert job.handle.wait(timeout=240) == 0
    with open(os.path.join(job.directory, RESULT_FILE), encoding="utf-8") as f:
        assert json.load(f)["reason"].startswith(f"pruned at report {len(read_reports(job.directory))} ")
    assert not running(rank1) and not processes_naming(job.directory)


def test_a_two_rank_trial_whose_other_rank_dies_fails_and_ends(coordinator):
    job, rank1 = launch(coordinator)
    wait(lambda: read_reports(job.directory), "a validation report")
    os.kill(rank1, signal.SIGKILL)  # as the OOM killer would
    assert job.handle.wait(timeout=60) == 1
    with open(os.path.join(job.directory, "error.txt"), encoding="utf-8") as f:
        assert "rank 1 of 2 failed (exit code -9)" in f.read()  # said by the watchdog, or by rank 0 when gloo noticed first
    assert not os.path.exists(os.path.join(job.directory, RESULT_FILE))
    assert not processes_naming(job.directory)


def test_cancelling_a_two_rank_trial_ends_its_process_group(coordinator):
    job, rank1 = launch(coordinator)
    wait(lambda: read_reports(job.directory), "a validation report")
    coordinator.backend.cancel(job)  # what the coordinator does to a running trial on SIGINT / SIGTERM
    assert not running(rank1) and not processes_naming(job.directory)


def test_ctrl_c_on_a_two_rank_study_leaves_no_rank_behind(tmp_path):
    require_data()
    results = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "run", "--space", two_rank_space(tmp_path), "--study", "c",
                             "--trials", "1", "--results", str(results)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    trials = results / "c" / "trials"
    wait(lambda: trials.is_dir() and any(read_reports(str(p)) for p in trials.iterdir()), "trial 0 reporting")
    assert len(processes_naming(str(trials))) == 2  # rank 0 (the trial process) and rank 1
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert not processes_naming(str(trials))


def test_ranks_per_trial_is_checked_where_it_is_read(tmp_path):
    path = tmp_path / "bad.toml"
    with open(MICRO_SPACE, encoding="utf-8") as f:
        path.write_text(f.read().replace('device = "cpu"', 'device = "cpu"\nranks_per_trial = 0'))
    result = subprocess.run([sys.executable, "-m", "search.cli", "run", "--space", str(path), "--results", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode != 0 and result.stderr.strip().splitlines()[-1].endswith("run.ranks_per_trial must be at least 1, got 0")
    # 1,024 tokens of 64 do not split over 3 ranks: refused before anything is stored.
    result = subprocess.run([sys.executable, "-m", "search.cli", "run", "--space", MICRO_SPACE, "--ranks-per-trial", "3",
                             "--study", "x", "--results", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode != 0 and "3 ranks per trial: train.batch_tokens 1024 does not split over 3 ranks" in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow  # a study plus 2-rank re-runs
def test_a_promotion_ladder_samples_on_one_rank_and_ranks_by_its_two_rank_reruns(tmp_path):
    from search.budget.reruns import RANKS_ATTR, best_configuration
    from test_search import load

    # The micro space by steps, under caps no busy machine can miss: the ladder's plumbing, not its speed.
    space = tmp_path / "steps.toml"
    with open(MICRO_SPACE, encoding="utf-8") as f:
        space.write_text(f.read().replace("train_seconds = 3.0", "train_seconds = 300.0").replace("eval_seconds = 60.0", "eval_seconds = 600.0")
                         .replace("iterations = 100000", "iterations = 4").replace("val_every_seconds = 1.0", "val_every = 2"))
    result = subprocess.run([sys.executable, "-m", "search.cli", "run", "--space", str(space), "--study", "l", "--trials", "2",
                             "--sampler-seed", "0", "--rerun-top", "1", "--rerun-seeds", "1", "--promote-ranks", "2",
                             "--results", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "re-running the best 1 configuration(s) on 2 ranks with 1 new seed(s)" in result.stdout
    study = load(tmp_path, "l")
    sampled, promoted = study.trials[:2], study.trials[2:]
    assert [t.user_attrs["placement"]["ranks"] for t in sampled] == [1, 1]
    # The lower rung trains under twice the cap (the steps 2 ranks train in it) and is held to that cap.
    assert all(t.user_attrs["config"]["train"]["max_wallclock_seconds"] == 600.0 for t in sampled if "config" in t.user_attrs)
    assert all(t.constraints["train_seconds"] == pytest.approx(t.user_attrs["train_seconds"] - 600.0) for t in sampled if t.constraints)
    assert len(promoted) == 1 and promoted[0].user_attrs[RANKS_ATTR] == 2 and promoted[0].user_attrs["placement"]["ranks"] == 2
    assert promoted[0].user_attrs["config"]["train"]["max_wallclock_seconds"] == 300.0
    best = best_configuration(study)
    assert best.values == [promoted[0].values[0]]  # ranked by its full-rank run alone
