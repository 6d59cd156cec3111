"""The paired comparison every bench reports: per-seed differences, their mean and its standard error."""

import statistics


def paired_difference(base: list[float], other: list[float], scale: float = 1.0) -> tuple[float, float, list[float]]:
    """(mean, standard error, per-seed differences) of other - base over the same seeds; se is nan for one seed."""
    diffs = [(o - b) * scale for b, o in zip(base, other)]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    return statistics.mean(diffs), se, diffs
