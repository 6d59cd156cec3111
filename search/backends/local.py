"""Trials as child processes on this machine."""

import os
import subprocess

from search.backends.process import Job, trial_process_setup, worker_command, worker_env


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
                                      env=worker_env(self.threads), preexec_fn=trial_process_setup,
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
