"""Where a trial's wall time goes: the trial process times its phases (metrics.json "phases", start-up
from the coordinator's launch on); its wall time is Optuna's, from ask to tell; the rest is the coordinator's."""

import time

OUTSIDE = "coordinator"  # wall time no phase of the trial process accounts for (ask, byte prediction, collection, tell)
TRAINING = "training"  # the only phase a submission's training cap counts; everything else is overhead


class PhaseClock:
    """Seconds per named phase of a trial, in the order they ran (a phase named twice adds up)."""

    def __init__(self):
        self.seconds: dict = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        """The time since the last lap goes to `name`."""
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.last
        self.last = now

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def lap_parts(self, parts: dict) -> None:
        """The time since the last lap, split: each part gets the seconds it was measured at, the one given as
        None the rest."""
        now = time.perf_counter()
        rest = now - self.last - sum(s for s in parts.values() if s is not None)
        for name, seconds in parts.items():
            self.add(name, rest if seconds is None else seconds)
        self.last = now


def wall_seconds(trial) -> float | None:
    """Ask to tell of a finished Optuna trial: what it cost the study."""
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def trial_phases(attrs: dict, wall: float | None = None) -> dict:
    """Seconds per phase of a finished trial (its user attributes or metrics), with the wall time no phase
    covers as OUTSIDE."""
    phases = dict(attrs.get("phases") or {})
    if wall is not None:
        phases[OUTSIDE] = max(wall - sum(phases.values()), 0.0)
    return phases
