"""The backend registry: every backend implements the one interface, and the CLI offers exactly the registered ones."""

import pytest

from search.backends import BACKENDS, backend_class
from search.backends.base import Backend
from search.backends.process import WORKER_LOG, group_members, worker_env
from search.backends.spare import SpareProcess
from search.cli import build_parser
from search.study import StudyError, StudySettings


def test_every_registered_backend_implements_the_interface_under_its_own_name():
    for name in BACKENDS:
        cls = backend_class(name)
        assert issubclass(cls, Backend) and not cls.__abstractmethods__ and cls.name == name


def test_the_cli_offers_the_registered_backends_and_an_unknown_one_is_one_clear_error():
    for command in (["run"], ["resume", "s"]):
        for name in BACKENDS:
            assert build_parser().parse_args(command + ["--backend", name]).backend == name
        with pytest.raises(SystemExit):
            build_parser().parse_args(command + ["--backend", "ray"])
    with pytest.raises(StudyError, match=r"^unknown backend 'ray' \(use local or tune\)$"):
        backend_class("ray")  # the plain ray.remote backend, retired for Tune


def test_local_trials_refuse_the_cluster_options():
    settings = StudySettings(name="s", space={}, space_source="", storage="sqlite:///x.db", cpus_per_trial=1.0, scheduler="asha")
    with pytest.raises(StudyError, match=r"--cpus-per-trial, --scheduler asha: for the tune backend"):
        backend_class("local").check_options(settings)
    backend_class("tune").check_options(settings)  # Tune reads them
    # GPUs per trial: the local backend shares this machine's out (tests/test_devices.py)
    backend_class("local").check_options(StudySettings(name="s", space={}, space_source="", storage="sqlite:///x.db", gpus_per_trial=1.0))


def test_a_spare_trial_process_runs_the_trial_it_is_handed_and_a_waiting_one_stops(tmp_path):
    spare = SpareProcess(worker_env(1))
    spare.start(str(tmp_path))
    waiting = spare.process
    with open(f"/proc/{waiting.pid}/cmdline", "rb") as f:  # it names the study's trials folder, as trials name theirs
        assert str(tmp_path).encode() in f.read()
    handed = spare.take(str(tmp_path), {"CUDA_VISIBLE_DEVICES": ""})
    assert handed is waiting and spare.process is None
    assert handed.wait(timeout=120) == 1  # no request.json: the trial fails at once, as a freshly started one does
    assert "request.json" in (tmp_path / "error.txt").read_text()
    assert "trial failed: FileNotFoundError" in (tmp_path / WORKER_LOG).read_text()  # its output, from the hand-over on
    spare.start(str(tmp_path))
    waiting = spare.process
    spare.stop()
    assert waiting.poll() is not None and not group_members(waiting.pid)
    assert spare.take(str(tmp_path), {}) is None  # none waiting: the backend starts the trial afresh
