"""A trial process started before it is needed: `python -m search.trial --spare TRIALS` does its imports (torch, Optuna,
pgolf and Dynamo, ~2.3 s on the AMD machines) and then waits for one line on its stdin naming the trial folder and the
environment the trial adds. The local backend starts one as the study starts and as each trial ends, so the
imports run while the coordinator tells that trial and asks the next, and hands the next trial to it.

It is the same process a fresh start would be: the same command's module, environment, process group and parent-death
signal (process.py), and its output goes to the trial folder's worker.log from the hand-over on. Only where trials get
no GPUs of their own (devices.py) is one used: whether an import touches CUDA, which would fix the visible devices
before the hand-over sets CUDA_VISIBLE_DEVICES, is untested on a GPU.
"""

import json
import os
import subprocess
import sys

from search.backends.process import WORKER_LOG, end_process_group, trial_process_setup, worker_command

SPARE_FLAG = "--spare"


class SpareProcess:
    """At most one waiting trial process (env: the environment worker_env gives every trial process of the study)."""

    def __init__(self, env: dict):
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self, trials_folder: str) -> None:
        """A spare, unless one waits. Its command names the study's trials folder, as a fresh trial's names its own
        folder inside it: ps and pkill -f find a study's trial processes by it."""
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(worker_command(SPARE_FLAG, trials_folder),
                                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            env=self.env, preexec_fn=trial_process_setup, cwd=os.getcwd())

    def take(self, directory: str, extra_env: dict) -> subprocess.Popen | None:
        """The waiting process, handed the trial in `directory`; None when there is none alive to take (start afresh)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return None
        try:
            process.stdin.write(json.dumps({"directory": directory, "env": extra_env}).encode("utf-8") + b"\n")
            process.stdin.close()
        except OSError:  # it died just now: a fresh start instead
            end_process_group(process)
            return None
        return process

    def stop(self) -> None:
        if self.process is not None:
            end_process_group(self.process)
            self.process = None


def wait_for_trial() -> str:
    """In the spare process, once its imports are done: the trial folder it is handed, with the trial's environment
    applied and its output sent to that folder's worker.log. An empty stdin (the coordinator is gone, or stopped the
    spare) ends the process."""
    line = sys.stdin.readline()
    if not line:
        raise SystemExit(0)
    handed = json.loads(line)
    os.environ.update(handed["env"])
    sys.stdout.flush()
    sys.stderr.flush()
    log = os.open(os.path.join(handed["directory"], WORKER_LOG), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    return handed["directory"]
