"""A trial as every backend starts it: `python -m search.trial DIR` in a process of its own, so a crash, OOM or
NaN ends that process only."""

import ctypes
import os
import signal
import sys
import time
from dataclasses import dataclass


WORKER_LOG = "worker.log"  # a trial process's own output (stdout and stderr), in its trial folder


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
    wait_group_gone(process.pid)


def wait_group_gone(group: int, seconds: float = 10.0) -> None:
    """Wait until no live process is left in `group`: SIGKILL is delivered asynchronously, and the other ranks are
    not our children, so reaping the trial process does not mean they are gone. Zombies count as gone (init reaps
    them); without /proc (not Linux) there is nothing to read and no wait."""
    deadline = time.monotonic() + seconds
    while group_members(group) and time.monotonic() < deadline:
        time.sleep(0.02)


def group_members(group: int) -> list[int]:
    """Live (not zombie) processes whose process group is `group`, read from /proc/PID/stat."""
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return members
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == group:  # state, ppid, pgrp
            members.append(int(entry))
    return members


def worker_command(*arguments: str) -> list[str]:
    """A trial process's command: its folder, or (spare.py) the spare flag and the study's trials folder."""
    return [sys.executable, "-m", "search.trial", *arguments]


def worker_env(threads: int, extra: dict | None = None) -> dict:
    env = dict(os.environ, **(extra or {}))
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
        env["PGOLF_THREADS"] = str(threads)
    return env
