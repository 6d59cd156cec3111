"""GPUs shared out among concurrent trials on one machine (search/backends/devices.py): each local trial gets devices
of its own through CUDA_VISIBLE_DEVICES, given back when it ends however it ends; W workers x N GPUs beyond the
visible ones is refused before anything is stored. On this CPU machine the GPUs are logical: CUDA_VISIBLE_DEVICES
names them, and the fixture script (tests/scripts/devices_style.py) prints the list it was started with."""

import json
import os
import re
import time

import pytest

from search.backends.devices import DevicePool, gpus_per_trial
from search.backends.local import LocalBackend
from search.backends.process import Job
from search.study import StudyError, StudySettings
from search.study import open_storage
from test_script_study import search, write_space

HERE = os.path.dirname(os.path.abspath(__file__))
DEVICES = os.path.join(HERE, "scripts", "devices_style.py")
WHERE = re.compile(r"^where rank:(\d+) cuda_visible_devices:(\S*) omp_num_threads:(\S*) started:(\S+)$", re.M)
ENDED = re.compile(r"^where rank:0 ended:(\S+)$", re.M)


def devices_space(folder, trials: int, ranks: int = 1, hold: float = 3.0) -> str:
    return write_space(folder, f'trials = {trials}\n[script]\npath = "{DEVICES}"\nartifact = "final_model.bin"\nranks = {ranks}\n'
                               f'[script.env]\nHOLD_SECONDS = {hold}\n[dims.LR]\nchoices = [0.1, 0.2, 0.3, 0.4]\n'
                               '[caps]\ntrain_seconds = 60\neval_seconds = 60\n[search]\npruner = "none"\n')


def trials(results, name):
    """The study's trials (several workers: a journal storage, which optuna.load_study takes as a storage object)."""
    import optuna

    settings = json.loads((results / name / "study.json").read_text())
    return optuna.load_study(study_name=name, storage=open_storage(settings["storage"])).get_trials()


def seen(results, name) -> dict:
    """trial number -> (the devices each rank saw, the OMP threads each rank got, (start, end) of rank 0)."""
    found = {}
    for t in trials(results, name):
        log = (results / name / "trials" / f"{t.number:04d}" / "train.log").read_text()
        ranks = sorted(WHERE.findall(log))
        found[t.number] = ([r[1] for r in ranks], [r[2] for r in ranks], (float(ranks[0][3]), float(ENDED.search(log).group(1))))
    return found


def settings(workers: int, gpus: float | None = None) -> StudySettings:
    return StudySettings(name="d", space={}, space_source="", storage="journal:///x", workers=workers, gpus_per_trial=gpus)


class Space:  # the one field gpus_per_trial reads of a space: an engine space has no script
    script = None


def test_the_gpus_per_trial_a_machine_can_give(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert gpus_per_trial(settings(2), Space, None) == 1  # GPUs visible: one each by default
    assert gpus_per_trial(settings(2), Space, "cpu") is None  # a CPU study hands out none
    assert gpus_per_trial(settings(1, 2.0), Space, None) == 2
    assert gpus_per_trial(settings(4, 0.0), Space, None) == 0  # trials see no GPU
    with pytest.raises(StudyError, match=r"^--workers 3 x 1 GPU\(s\) per trial = 3 GPUs, more than the 2 this machine shows "
                                         r"\(CUDA_VISIBLE_DEVICES=0,1\): lower --workers or --gpus-per-trial$"):
        gpus_per_trial(settings(3), Space, None)
    with pytest.raises(StudyError, match=r"^--gpus-per-trial 0.5: the local backend gives each trial whole GPUs$"):
        gpus_per_trial(settings(1, 0.5), Space, None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpus_per_trial(settings(8), Space, None) is None  # none visible: as before, nothing handed out
    pool = DevicePool(["0", "1", "2"], 2)
    assert pool.take(5) == "0,1" and pool.free == ["2"]
    pool.give_back(5)
    pool.give_back(5)  # twice (poll, then cancel): once
    assert sorted(pool.free) == ["0", "1", "2"]


def test_too_many_gpus_for_the_workers_is_refused_before_the_study_exists(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    results = tmp_path / "results"
    for flags, message in ((("--workers", "3"), "--workers 3 x 1 GPU(s) per trial = 3 GPUs, more than the 2"),
                           (("--workers", "2", "--gpus-per-trial", "2"), "--workers 2 x 2 GPU(s) per trial = 4 GPUs")):
        code, out, err = search(capsys, "run", "--space", devices_space(tmp_path, 2), "--study", "x", *flags, "--results", str(results))
        assert code != 0 and len(err.strip().splitlines()) == 1 and message in err, err
        assert not (results / "x").exists()
    code, out, err = search(capsys, "run", "--space", devices_space(tmp_path, 2, ranks=2), "--study", "x", "--gpus-per-trial", "1",
                            "--results", str(results))
    assert code != 0 and "--gpus-per-trial 1: a trial runs 2 ranks, each needs a GPU of its own" in err, err


def test_two_concurrent_trials_each_see_their_own_device(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    results = tmp_path / "results"
    code, out, err = search(capsys, "run", "--space", devices_space(tmp_path, 3), "--study", "two", "--workers", "2",
                            "--sampler-seed", "0", "--results", str(results))
    assert code == 0, err
    where = seen(results, "two")
    (first, _, span0), (second, _, span1), (third, _, _) = where[0], where[1], where[2]
    assert span0[0] < span1[1] and span1[0] < span0[1], (span0, span1)  # they ran at the same time
    assert sorted(first + second) == ["0", "1"] and len(third) == 1 and third[0] in ("0", "1")
    for t in trials(results, "two"):  # the placement recorded as the Tune backend records it
        assert t.state.name == "COMPLETE" and t.user_attrs["placement"]["cuda_visible_devices"] == where[t.number][0][0]
    code, out, err = search(capsys, "status", "two", "--results", str(results))
    assert "ran on" in out and " gpu 0" in out and " gpu 1" in out, out
    print(f"two concurrent 1-GPU trials given CUDA_VISIBLE_DEVICES=0,1: trial 0 saw {first}, trial 1 saw {second} "
          f"(overlapping {min(span0[1], span1[1]) - max(span0[0], span1[0]):.1f} s); trial 2, started when one ended, saw {third}")


def test_a_script_trials_ranks_get_its_devices_and_share_its_cores(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    results = tmp_path / "results"
    code, out, err = search(capsys, "run", "--space", devices_space(tmp_path, 2, ranks=2, hold=1.0), "--study", "r", "--workers", "2",
                            "--sampler-seed", "0", "--results", str(results))
    assert code == 0, err
    where = seen(results, "r")
    print(f"two concurrent 2-rank trials given CUDA_VISIBLE_DEVICES=0,1,2,3: ranks saw {[where[n][0] for n in sorted(where)]}, "
          f"OMP_NUM_THREADS {[where[n][1] for n in sorted(where)]} on {os.cpu_count()} cores")
    lists = [where[n][0] for n in sorted(where)]
    assert all(len(ranks) == 2 and ranks[0] == ranks[1] for ranks in lists), lists  # both ranks of a trial: its two devices
    assert sorted(",".join(ranks[0] for ranks in lists).split(",")) == ["0", "1", "2", "3"], lists
    threads = str(max(1, max(1, (os.cpu_count() or 1) // 2) // 2))  # the trial's share of the cores, split by its ranks
    assert all(t == [threads, threads] for _, t, _ in where.values()), where


def test_a_trials_devices_come_back_when_it_fails_or_is_stopped(tmp_path):
    backend = LocalBackend(settings(2))
    backend.pool = DevicePool(["0", "1"], 1)
    failing = Job(number=0, directory=str(tmp_path / "a"))  # no request.json: the trial process fails at once
    stopped = Job(number=1, directory=str(tmp_path / "b"))
    for job in (failing, stopped):
        os.makedirs(job.directory)
        backend._launch(job)
    assert backend.pool.free == []
    backend.cancel(stopped)
    assert backend.pool.free == ["1"]
    deadline = time.time() + 60
    while backend.poll(failing) is None and time.time() < deadline:
        time.sleep(0.1)
    assert failing.handle.returncode == 1 and sorted(backend.pool.free) == ["0", "1"]
