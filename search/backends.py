"""Where trial processes run: local subprocesses (here), or Ray Tune trials on a cluster (tune_backend.py).

Either way a trial is `python -m search.trial DIR` in a process of its own, so a crash, OOM or NaN
ends that process only. The coordinator keeps Optuna's ask/tell (prepare_next, finish); a backend's
`drive(coordinator)` runs the study's loop with them, and `cancel`/`poll` let the coordinator stop it.
"""

import ctypes
import os
import signal
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Job:
    number: int
    directory: str
    handle: object = None


def _trial_process_setup() -> None:
    # A process group of its own: Ctrl-C in a terminal sends SIGINT to the whole foreground group, and the
    # trial must not die of its own KeyboardInterrupt; the coordinator stops it and decides what it becomes.
    os.setpgid(0, 0)
    # Linux: if the coordinator is killed (even with -9), its trial processes get SIGKILL too,
    # instead of training on as orphans that nobody will record.
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_command(directory: str) -> list[str]:
    return [sys.executable, "-m", "search.trial", directory]


def worker_env(threads: int, extra: dict | None = None) -> dict:
    env = dict(os.environ, **(extra or {}))
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
        env["PGOLF_THREADS"] = str(threads)
    return env


class LocalBackend:
    """Trials as child processes on this machine, `threads` CPU threads each."""

    name = "local"
    stops_trials = False  # trials stop early through the study's own Optuna pruner

    def __init__(self, workers: int):
        self.threads = max(1, (os.cpu_count() or 1) // max(workers, 1))

    def drive(self, coordinator) -> None:
        coordinator.local_loop()

    def launch(self, job: Job) -> None:
        log = open(os.path.join(job.directory, "worker.log"), "wb")
        job.handle = subprocess.Popen(worker_command(job.directory), stdout=log, stderr=subprocess.STDOUT,
                                      env=worker_env(self.threads), preexec_fn=_trial_process_setup,
                                      cwd=os.getcwd())
        log.close()

    def poll(self, job: Job) -> int | None:
        return job.handle.poll()

    def cancel(self, job: Job) -> None:
        if job.handle.poll() is None:
            job.handle.kill()
            job.handle.wait()

    def shutdown(self) -> None:
        pass


def make_backend(settings):
    """The backend a study's settings name. `ray` was the plain ray.remote backend, retired for Tune."""
    if settings.backend == "local":
        return LocalBackend(settings.workers)
    if settings.backend in ("tune", "ray"):
        from search.tune_backend import TuneBackend

        return TuneBackend(settings)
    raise ValueError(f"unknown backend {settings.backend!r} (use local or tune)")
