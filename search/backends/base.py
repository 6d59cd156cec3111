"""The one interface every backend implements (search/backends/__init__.py lists them by name)."""

from abc import ABC, abstractmethod
from typing import ClassVar

from search.backends.process import Job
from search.study import StudyError

# Settings only a backend that places trials on a cluster reads: Tune's scheduler and per-trial resources.
CLUSTER_OPTIONS = ("gpus_per_trial", "cpus_per_trial")


class Backend(ABC):
    """Where a study's trials run. Ask and tell stay with the coordinator: a backend runs the study's loop
    (drive), starting the trials coordinator.prepare_next stages and telling each ended one with
    coordinator.finish, until the study is over or coordinator.stop_signal is set."""

    name: ClassVar[str]  # the --backend value, and the key in BACKENDS
    stops_trials: bool = False  # True: the backend's own scheduler stops trials early; the study's pruner stays out
    options: ClassVar[tuple[str, ...]] = ()  # the CLUSTER_OPTIONS this backend reads too (local: gpus_per_trial)

    @classmethod
    def check_options(cls, settings) -> None:
        """Refuse, before anything is stored, the study settings this backend does not read (the cluster's)."""
        given = [f"--{k.replace('_', '-')}" for k in CLUSTER_OPTIONS if k not in cls.options and getattr(settings, k) is not None]
        given += ["--scheduler asha"] if settings.scheduler != "fifo" else []
        if given:
            raise StudyError(f"{', '.join(given)}: for the tune backend (--backend tune); {cls.name} trials use this machine's CPUs or GPU")

    @abstractmethod
    def drive(self, coordinator) -> None:
        """Run the study's loop (see the class docstring); returns when it is over or stopped."""

    @abstractmethod
    def poll(self, job: Job) -> int | None:
        """The exit code of the job's trial process; None while it runs, or when the backend tells ends itself."""

    @abstractmethod
    def cancel(self, job: Job) -> None:
        """Stop the job's trial process (the coordinator then fails the trial and queues it again)."""

    def shutdown(self) -> None:
        """Release what the backend holds, once the loop is over."""


def study_trial_ranks(settings) -> int:
    """The processes (and so GPUs, one each) a trial of this study runs at once: a script space's [script] ranks, else
    the engine study's ranks per trial."""
    return int(settings.space.get("script", {}).get("ranks", settings.ranks_per_trial))
