"""A trial with N DDP ranks: the trial process is rank 0, and starts ranks 1..N-1 as children of its own.

Each rank gets torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT), so
pgolf's trainer runs DDP exactly as under `torchrun --standalone --nproc_per_node=N` (NCCL on GPUs, gloo on
CPU). Rank 0 reports to the pruner and writes the trial's files; the others train and leave once training is
over, and rank 0 then allocates and scores alone, as a one-rank trial does (search/trial.py).

No rank outlives the trial: the children stay in the trial's process group (a backend ends the whole group),
die with rank 0 (PR_SET_PDEATHSIG), are killed by rank 0 when it is pruned or fails, and a child that fails
takes rank 0 down at once (a watchdog thread) instead of leaving it blocked in a collective.
"""

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time


class RankFailed(RuntimeError):
    """Another rank of the trial failed (its own error is in its log, rank<k>.log)."""


def rank_threads(threads: int, ranks: int) -> int:
    """CPU threads per rank: the trial's share of the cores, split over its ranks (at least one each)."""
    return max(1, threads // max(ranks, 1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # Linux: a rank whose rank 0 is killed (even with -9) gets SIGKILL too. The process group stays the trial's.
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def is_extra_rank() -> bool:
    """This process is rank 1..N-1 of a trial (started by RankGroup)."""
    return os.environ.get("PGOLF_TRIAL_RANK", "0") != "0"


class RankGroup:
    """Ranks 1..N-1 of the trial in `directory`, started by rank 0, which then holds torchrun's environment too."""

    def __init__(self, directory: str, ranks: int):
        self.directory, self.ranks = directory, ranks
        self.children: dict[int, subprocess.Popen] = {}
        self.ending = False  # set before rank 0 kills the others: their deaths are then not failures
        threads = os.environ.get("PGOLF_THREADS")
        share = str(rank_threads(int(threads), ranks)) if threads else None
        per_rank = {"PGOLF_THREADS": share, "OMP_NUM_THREADS": share} if share else {}
        common = {"WORLD_SIZE": str(ranks), "LOCAL_WORLD_SIZE": str(ranks), "MASTER_ADDR": "127.0.0.1",
                  "MASTER_PORT": str(_free_port()), **per_rank}
        for rank in range(1, ranks):
            env = dict(os.environ, **common, RANK=str(rank), LOCAL_RANK=str(rank), PGOLF_TRIAL_RANK=str(rank))
            with open(os.path.join(directory, f"rank{rank}.log"), "wb") as log:
                self.children[rank] = subprocess.Popen([sys.executable, "-m", "search.trial", directory], stdout=log,
                                                       stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        os.environ.update(common, RANK="0", LOCAL_RANK="0")
        if threads:
            import torch

            torch.set_num_threads(rank_threads(int(threads), ranks))
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        """A rank that fails ends the trial now: rank 0 may be waiting for it in a collective that never returns."""
        while self.children:
            for rank, child in list(self.children.items()):
                code = child.poll()
                if code is None:
                    continue
                self.children.pop(rank, None)
                if code != 0 and not self.ending:
                    self.end()
                    reason = self._failure(rank, code)
                    with open(os.path.join(self.directory, "error.txt"), "w", encoding="utf-8") as f:
                        f.write(reason + "\n")
                    print(f"trial failed: {reason}", file=sys.stderr, flush=True)
                    os._exit(1)
            time.sleep(0.1)

    def _failure(self, rank: int, code: int) -> str:
        return f"rank {rank} of {self.ranks} failed (exit code {code}): {_last_line(self.directory, rank)}"

    def failure(self) -> str | None:
        """Why a rank failed, if one has (rank 0's own error may be only the echo of it: gloo's lost connection)."""
        for rank, child in list(self.children.items()):
            code = child.poll()
            if code not in (None, 0):
                return self._failure(rank, code)
        return None

    def end(self) -> None:
        """Kill and reap every rank still running (a pruned, failed or finished trial)."""
        self.ending = True
        children, self.children = dict(self.children), {}
        for child in children.values():
            if child.poll() is None:
                child.kill()
        for child in children.values():
            child.wait()


def _last_line(directory: str, rank: int) -> str:
    try:
        with open(os.path.join(directory, f"rank{rank}.log"), encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output (killed?)"


def leave_training_group(runtime) -> None:
    """After training: every rank leaves the process group (after a barrier, so none tears down a connection
    another still uses), and rank 0 goes on as a one-rank run: the allocation and the scores are rank 0's alone."""
    import torch.distributed as dist

    if runtime.world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    runtime.world_size = 1


def run_extra_rank(directory: str) -> int:
    """Rank 1..N-1 of a trial: train alongside rank 0 (the same config, its share of every batch, the validation
    reports' collectives), then leave; rank 0 writes every file of the trial."""
    import json

    from pgolf.config import config_from_dict
    from pgolf.datasets import DataPaths
    from pgolf.run import subset_validator
    from pgolf.submission import setup_runtime, train_model
    from search.trialfiles import REQUEST_FILE

    with open(os.path.join(directory, REQUEST_FILE), encoding="utf-8") as f:
        request = json.load(f)
    config, data = config_from_dict(request["config"]), DataPaths(**request["data"])
    runtime = setup_runtime(request.get("device"))
    train_model(config, data.train_pattern, runtime, validate_fn=subset_validator(config, data, runtime), log=lambda *_: None)
    leave_training_group(runtime)
    return 0
