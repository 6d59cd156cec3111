"""Trials as child processes on this machine."""

import os
import subprocess
import time

from search.backends.base import Backend
from search.backends.devices import DevicePool, gpus_per_trial, visible_gpus
from search.backends.process import WORKER_LOG, Job, end_process_group, trial_process_setup, worker_command, worker_env
from search.backends.spare import SpareProcess
from search.study import trial_dir


class LocalBackend(Backend):
    """Trials as child processes on this machine, up to the study's worker count at once, with an equal share of
    its CPU threads each and, where GPUs are visible, GPUs of their own (devices.py). Trials stop early through the
    study's own Optuna pruner."""

    name = "local"
    options = ("gpus_per_trial",)

    def __init__(self, settings):
        self.settings = settings
        self.threads = max(1, (os.cpu_count() or 1) // max(settings.workers, 1))
        self.pool: DevicePool | None = None
        # The next trial's process, importing while the coordinator tells the last trial and asks the next (spare.py);
        # CPU trials only (drive).
        self.spare: SpareProcess | None = None
        self.asking, self.trials_folder = False, ""

    def drive(self, coordinator) -> None:
        """Start trials up to the worker count, collect the ended ones."""
        c = coordinator
        per_trial = gpus_per_trial(self.settings, c.space, c.device)  # checked before the study was created
        if per_trial is not None:
            self.pool = DevicePool(visible_gpus()[0], per_trial)
        else:  # not where trials get GPUs of their own: an import could touch CUDA before CUDA_VISIBLE_DEVICES is set
            self.spare = SpareProcess(worker_env(self.threads))
        stop_asking = False
        self.trials_folder = os.path.dirname(trial_dir(c.directory, 0))
        while c.stop_signal is None:
            stop_asking = stop_asking or c.sampling_over(c.rerunning)
            self.asking = not stop_asking
            while not (stop_asking or c.stop_signal) and len(c.jobs) < c.settings.workers:
                if self.spare is not None:  # its imports overlap the ask (a no-op while one waits)
                    self.spare.start(self.trials_folder)
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
        self.asking = False

    def _launch(self, job: Job) -> None:
        # The trial's GPUs, as Ray gives a Tune trial its own: the trial records them in placement.json.
        extra = {"CUDA_VISIBLE_DEVICES": self.pool.take(job.number)} if self.pool is not None else {}
        try:
            job.handle = self.spare.take(job.directory, extra) if self.spare is not None else None
            if job.handle is None:  # none waiting: started afresh
                with open(os.path.join(job.directory, WORKER_LOG), "wb") as log:
                    job.handle = subprocess.Popen(worker_command(job.directory), stdout=log, stderr=subprocess.STDOUT,
                                                  env=worker_env(self.threads, extra), preexec_fn=trial_process_setup,
                                                  cwd=os.getcwd())
        except BaseException:
            self._release(job)
            raise

    def _release(self, job: Job) -> None:
        if self.pool is not None:
            self.pool.give_back(job.number)

    def poll(self, job: Job) -> int | None:
        code = job.handle.poll()
        if code is not None:  # ended (completed, pruned or failed): its GPUs go to the next trial
            self._release(job)
            if self.asking and self.spare is not None:  # the next trial's process imports while this one is told
                self.spare.start(self.trials_folder)
        return code

    def cancel(self, job: Job) -> None:
        end_process_group(job.handle)  # the trial and every rank it started
        self._release(job)

    def shutdown(self) -> None:
        if self.spare is not None:
            self.spare.stop()
