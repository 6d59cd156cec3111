"""A trial's memory: the peak it reached (recorded beside its placement), and the one retry with half the
micro-batch that a CUDA out-of-memory error gets before the trial fails (search/trial.py)."""

import dataclasses
import math
import os
import resource

import torch

from pgolf.train import batch_plan

# Test-only: the k-th validation report of a trial's first attempt raises torch's real out-of-memory error, so the
# retry path runs on a CPU exactly as it runs after a real one on a GPU.
TEST_OOM_ENV = "PGOLF_TEST_OOM_AT_REPORT"


def peak_memory(device: torch.device) -> dict:
    """This process's peak memory: allocated by torch on a GPU, resident set size on a CPU (Linux reports KiB)."""
    if device.type == "cuda":
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(device), "peak_memory_of": "torch.cuda.max_memory_allocated"}
    return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_memory_of": "ru_maxrss"}


def pass_tokens(config, ranks: int, device: torch.device) -> int:
    """Tokens per forward/backward pass of a rank (train.micro_batch_tokens as batch_plan resolves it)."""
    return batch_plan(config.train, ranks, device.type)[0]


def halved_micro_batch(config, ranks: int, device: torch.device):
    """`config` with passes of half the tokens, or None where half a pass is not whole sequences of every length."""
    half = pass_tokens(config, ranks, device) // 2
    train = config.train
    if half == 0 or half % math.lcm(train.seq_len, *train.seq_len_stages):
        return None
    return dataclasses.replace(config, train=dataclasses.replace(train, micro_batch_tokens=half))


def raise_test_oom(report: int, attempt: int) -> None:
    """Raise torch.cuda.OutOfMemoryError at report PGOLF_TEST_OOM_AT_REPORT of a first attempt (tests only)."""
    if attempt == 1 and os.environ.get(TEST_OOM_ENV) == str(report):
        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory ({TEST_OOM_ENV}={report})")
