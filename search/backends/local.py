"""Trials as child processes on this machine."""

import os
import subprocess
import time

from search.backends.base import Backend
from search.backends.process import Job, end_process_group, trial_process_setup, worker_command, worker_env


class LocalBackend(Backend):
    """Trials as child processes on this machine, up to the study's worker count at once, with an equal share of
    its CPU threads each. Trials stop early through the study's own Optuna pruner."""

    name = "local"

    def __init__(self, settings):
        self.threads = max(1, (os.cpu_count() or 1) // max(settings.workers, 1))

    def drive(self, coordinator) -> None:
        """Start trials up to the worker count, collect the ended ones."""
        c = coordinator
        stop_asking = False
        while c.stop_signal is None:
            stop_asking = stop_asking or c.sampling_over(c.rerunning)
            while not (stop_asking or c.stop_signal) and len(c.jobs) < c.settings.workers:
                prepared = c.prepare_next(reruns=c.rerunning)
                if prepared is None:
                    stop_asking = True
                else:
                    self._launch(prepared[0])
            if not c.jobs and stop_asking:
                if not c.next_phase():
                    break
                stop_asking = False
            c.collect()
            c.tick()
            time.sleep(0.2)  # a finished trial waits at most this long to be told

    def _launch(self, job: Job) -> None:
        log = open(os.path.join(job.directory, "worker.log"), "wb")
        job.handle = subprocess.Popen(worker_command(job.directory), stdout=log, stderr=subprocess.STDOUT,
                                      env=worker_env(self.threads), preexec_fn=trial_process_setup,
                                      cwd=os.getcwd())
        log.close()

    def poll(self, job: Job) -> int | None:
        return job.handle.poll()

    def cancel(self, job: Job) -> None:
        end_process_group(job.handle)
