"""GPUs shared out among a study's concurrent trials on one machine (the local backend).

The GPUs a study may use are those this machine shows: the ids in CUDA_VISIBLE_DEVICES where it is set (so a user
can reserve some, and a test on a CPU machine can name logical ones), else every device torch counts. Each trial
gets its own N of them through its CUDA_VISIBLE_DEVICES, as Ray sets it for a Tune trial: taken from a pool when its
process starts, given back when the process ends however it ends (completed, pruned, failed, stopped). N is
--gpus-per-trial; by default one per rank of a trial (an engine trial's DDP ranks, a script's torchrun ranks)
wherever GPUs are visible and the study does not run on the CPU. W workers x N GPUs beyond what is visible is
refused before the study is created.
"""

import os

from search.backends.base import study_trial_ranks
from search.study import StudyError


def visible_gpus() -> tuple[list[str], str]:
    """(the GPU ids trials may be given, where that list came from)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = []
        for entry in (e.strip() for e in listed.split(",")):
            if not entry or entry.startswith("-"):  # CUDA stops at the first invalid id ("-1" hides every GPU)
                break
            ids.append(entry)
        return ids, f"CUDA_VISIBLE_DEVICES={listed}"
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [str(i) for i in range(count)], f"torch sees {count} CUDA device(s)"


def gpus_per_trial(settings, space, device: str | None) -> int | None:
    """GPUs each concurrent trial gets on the local backend (0: none, the trial sees no GPU); None: no GPUs handed
    out, trials see this machine's as they are (no GPU visible, or a CPU study). A count that cannot be given is
    refused in one line."""
    visible, source = visible_gpus()
    ranks = study_trial_ranks(settings)
    wanted = settings.gpus_per_trial
    if wanted is None:
        if not visible or device == "cpu":
            return None
        wanted = ranks
    if wanted != int(wanted):
        raise StudyError(f"--gpus-per-trial {wanted:g}: the local backend gives each trial whole GPUs")
    wanted = int(wanted)
    if 0 < wanted < ranks:
        raise StudyError(f"--gpus-per-trial {wanted}: a trial runs {ranks} ranks, each needs a GPU of its own")
    if settings.workers * wanted > len(visible):
        raise StudyError(f"--workers {settings.workers} x {wanted} GPU(s) per trial = {settings.workers * wanted} GPUs, more than "
                         f"the {len(visible)} this machine shows ({source}): lower --workers or --gpus-per-trial")
    return wanted


class DevicePool:
    """The visible GPUs, handed out `per_trial` at a time and given back."""

    def __init__(self, devices: list[str], per_trial: int):
        self.free = list(devices)
        self.per_trial = per_trial
        self.held: dict[int, list[str]] = {}  # trial number -> its devices

    def take(self, number: int) -> str:
        """The CUDA_VISIBLE_DEVICES of trial `number` (its devices leave the pool until give_back)."""
        if len(self.free) < self.per_trial:  # gpus_per_trial refused W x N > visible: a bug if reached
            raise RuntimeError(f"no {self.per_trial} free GPU(s) for trial {number}: {self.held} are held")
        self.held[number], self.free = self.free[:self.per_trial], self.free[self.per_trial:]
        return ",".join(self.held[number])

    def give_back(self, number: int) -> None:
        """Return trial `number`'s devices (again: nothing)."""
        self.free.extend(self.held.pop(number, []))
