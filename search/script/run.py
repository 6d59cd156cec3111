"""One run of a training script as it is: in a folder of its own, with its environment, output streamed to a
log file and parsed as it comes (logs.py); stopped (its whole process group, torchrun's ranks included)
when the caller prunes it on a validation report or when it outlives its time limit.

The outcome is one of completed / pruned / failed / over_time; a failure carries one line saying which
(non-zero exit, no final score, a non-finite score, no artifact) and the last lines of the log.
"""

import glob
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from search.backends.process import trial_process_setup
from search.script import ScriptError
from search.script.logs import LogSummary, Progress, ScriptLog

TAIL_LINES = 20
STOP_GRACE_SECONDS = 10.0  # SIGTERM first, so torchrun can end its ranks; SIGKILL after this


def script_command(script: str, ranks: int = 1, interpreter: str | None = None) -> list[str]:
    """`python SCRIPT`, or `torchrun --standalone --nproc_per_node=N SCRIPT` (as the module of that interpreter)."""
    python = interpreter or sys.executable
    if ranks < 1:
        raise ScriptError(f"ranks must be at least 1, not {ranks}")
    if ranks == 1:
        return [python, script]
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", script]


@dataclass
class ScriptRun:
    outcome: str                 # completed | pruned | failed | over_time
    reason: str                  # one line for anything but completed
    returncode: int | None
    summary: LogSummary
    wall_seconds: float
    artifact: str | None = None
    artifact_bytes: int | None = None
    tail: list[str] = field(default_factory=list)


def _stop(process: subprocess.Popen) -> None:
    for signum, wait in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_script(command: list[str], workdir: str, env: dict[str, str], log_path: str, *, final_tag: str | None = None,
               artifact_glob: str | None = None, time_limit: float | None = None, on_report=None) -> ScriptRun:
    """Run `command` in `workdir` with `env` added to this environment. `on_report(progress)` is called for
    each validation report and returns True to stop the run (pruned); past `time_limit` seconds it is stopped
    (over_time). `artifact_glob` is relative to `workdir`; the newest match is the artifact."""
    parser = ScriptLog(final_tag)  # an invalid tag pattern is refused before anything starts
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    start = time.monotonic()
    full_env = dict(os.environ, **env, PYTHONUNBUFFERED="1")
    try:
        process = subprocess.Popen(command, cwd=workdir, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, errors="replace", bufsize=1, preexec_fn=trial_process_setup)  # its own group, killed with its parent
    except OSError as exc:
        raise ScriptError(f"cannot start {command[0]}: {exc.strerror}") from None
    timed_out = threading.Event()

    def on_timeout():
        timed_out.set()
        _stop(process)

    timer = threading.Timer(time_limit, on_timeout) if time_limit else None
    if timer:
        timer.daemon = True
        timer.start()
    pruned = False
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                tail.append(line.rstrip("\n"))
                report: Progress | None = parser.feed(line)
                if report is not None and on_report is not None and not pruned and on_report(report):
                    pruned = True
                    _stop(process)
        returncode = process.wait()
    finally:
        if timer:
            timer.cancel()
        if process.poll() is None:  # an exception (Ctrl-C) while reading: take the script down with us
            _stop(process)
    return _outcome(parser.summary(), returncode, pruned, timed_out.is_set(), time_limit, workdir, artifact_glob,
                    time.monotonic() - start, list(tail))


def _outcome(summary, returncode, pruned, timed_out, time_limit, workdir, artifact_glob, wall, tail) -> ScriptRun:
    def ended(outcome, reason, artifact=None, size=None):
        return ScriptRun(outcome, reason, returncode, summary, wall, artifact, size, tail)

    if pruned:
        return ended("pruned", f"pruned at step {summary.progress[-1].step}")
    if timed_out:
        return ended("over_time", f"the script ran past its time limit of {time_limit:g} s and was stopped")
    if returncode != 0:
        return ended("failed", f"the script exited with status {returncode}")
    try:
        summary.score()
    except ScriptError as exc:
        return ended("failed", str(exc))
    if artifact_glob:
        matches = sorted(glob.glob(os.path.join(workdir, artifact_glob)), key=os.path.getmtime)
        if not matches:
            return ended("failed", f"the script wrote no artifact matching {artifact_glob}")
        return ended("completed", "", matches[-1], os.path.getsize(matches[-1]))
    return ended("completed", "")
