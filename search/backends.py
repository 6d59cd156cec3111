"""Where trial processes run: local subprocesses, or Ray tasks with resources per trial.

Either way a trial is `python -m search.trial DIR` in a process of its own, so a crash, OOM or NaN
ends that process only. The coordinator keeps Optuna's ask/tell; backends only start and watch.
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


def worker_env(threads: int) -> dict:
    env = dict(os.environ)
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
        env["PGOLF_THREADS"] = str(threads)
    return env


class LocalBackend:
    """Trials as child processes on this machine, `threads` CPU threads each."""

    name = "local"

    def __init__(self, workers: int):
        self.threads = max(1, (os.cpu_count() or 1) // max(workers, 1))

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


def _run_trial_in_ray(directory: str, request: bytes, threads: int) -> tuple[int, dict]:
    """Body of the Ray task: run the trial process on the node Ray chose.

    With a shared filesystem the trial writes to `directory` directly; on a node that cannot see it,
    it runs in a local temporary folder and its files travel back through Ray's object store.
    """
    import tempfile

    shared = os.path.isdir(directory)
    workdir = directory if shared else tempfile.mkdtemp(prefix="pgolf-trial-")
    if not shared:
        with open(os.path.join(workdir, "request.json"), "wb") as f:
            f.write(request)
    with open(os.path.join(workdir, "worker.log"), "wb") as log:
        code = subprocess.run(worker_command(workdir), stdout=log, stderr=subprocess.STDOUT, env=worker_env(threads)).returncode
    files = {}
    if not shared:
        for name in os.listdir(workdir):
            with open(os.path.join(workdir, name), "rb") as f:
                files[name] = f.read()
    return code, files


class RayBackend:
    """Trials as Ray tasks: 1 GPU each where GPUs exist (CPUs otherwise); a local Ray or --address."""

    name = "ray"

    def __init__(self, workers: int, address: str | None = None, gpus_per_trial: float | None = None,
                 cpus_per_trial: float | None = None):
        import ray

        self.ray = ray
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        resources = ray.cluster_resources()
        has_gpus = resources.get("GPU", 0) > 0
        self.gpus = gpus_per_trial if gpus_per_trial is not None else (1 if has_gpus else 0)
        self.cpus = cpus_per_trial or max(1, int(resources.get("CPU", 1) // max(workers, 1)))
        self.remote = ray.remote(_run_trial_in_ray)

    def launch(self, job: Job) -> None:
        with open(os.path.join(job.directory, "request.json"), "rb") as f:
            request = f.read()
        job.handle = self.remote.options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0).remote(
            job.directory, request, int(self.cpus))

    def poll(self, job: Job) -> int | None:
        ready, _ = self.ray.wait([job.handle], timeout=0)
        if not ready:
            return None
        try:
            code, files = self.ray.get(job.handle)
        except Exception:  # a crashed Ray worker (OOM kill, node loss) fails this trial only
            return -1
        for name, content in files.items():
            with open(os.path.join(job.directory, name), "wb") as f:
                f.write(content)
        return code

    def cancel(self, job: Job) -> None:
        self.ray.cancel(job.handle, force=True)

    def shutdown(self) -> None:
        self.ray.shutdown()


def make_backend(name: str, workers: int, address: str | None = None):
    if name == "local":
        return LocalBackend(workers)
    if name == "ray":
        return RayBackend(workers, address)
    raise ValueError(f"unknown backend {name!r} (use local or ray)")
