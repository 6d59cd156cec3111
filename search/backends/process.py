"""A trial as every backend starts it: `python -m search.trial DIR` in a process of its own, so a crash, OOM or
NaN ends that process only."""

import ctypes
import os
import signal
import sys
from dataclasses import dataclass


@dataclass
class Job:
    number: int
    directory: str
    handle: object = None


def trial_process_setup() -> None:
    # A process group of its own: Ctrl-C in a terminal sends SIGINT to the whole foreground group, and the
    # trial must not die of its own KeyboardInterrupt; the coordinator stops it and decides what it becomes.
    os.setpgid(0, 0)
    # Linux: if the coordinator is killed (even with -9), its trial processes get SIGKILL too,
    # instead of training on as orphans that nobody will record.
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def end_process_group(process) -> None:
    """Kill a trial process and everything in its process group (its other ranks: search/ranks.py), then reap it."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # trial_process_setup made the trial's pid its group's id
        except ProcessLookupError:
            pass
        process.kill()
    process.wait()


def worker_command(directory: str) -> list[str]:
    return [sys.executable, "-m", "search.trial", directory]


def worker_env(threads: int, extra: dict | None = None) -> dict:
    env = dict(os.environ, **(extra or {}))
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
        env["PGOLF_THREADS"] = str(threads)
    return env
