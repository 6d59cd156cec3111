"""Where a study's trials spend their wall time: seconds per phase and % of trial wall (ask to tell), over the
completed trials of one or more studies; `training` is the only phase the challenge's training cap counts.

    python bench/trial_overhead.py STUDY [STUDY ...] [--results DIR] [--trials originals|reruns|all]

Trials recorded before phases were (older code) show the coarse split they have: training, allocation,
other trial work, coordinator. The last line separates the chosen artifact's whole-split score (the evaluation a
submission runs itself, its length set by the eval cap through the stride) from the rest.
"""

import argparse
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from search.budget.phases import TRAINING, trial_phases, wall_seconds  # noqa: E402
from search.budget.reruns import RERUN_ATTR, is_scored  # noqa: E402
from search.study import RESULTS_DIR, open_existing_study  # noqa: E402


def study_table(name: str, results: str, which: str = "all") -> str:
    _, _, study = open_existing_study(name, results)
    trials = [t for t in study.get_trials(deepcopy=False) if is_scored(t)
              and (which == "all" or (RERUN_ATTR in t.user_attrs) == (which == "reruns"))]
    if not trials:
        return f"{name}: no completed trial"
    walls = [wall_seconds(t) for t in trials]
    phases = [trial_phases(t.user_attrs, w) for t, w in zip(trials, walls)]
    names = list(dict.fromkeys(n for p in phases for n in p))
    wall = statistics.fmean(walls)
    lines = [f"{name}: {len(trials)} completed trials ({which}), mean wall {wall:.1f} s (ask to tell)",
             f"  {'phase':<32}{'mean s':>8}{'% of wall':>11}"]
    for n in names:
        seconds = statistics.fmean(p.get(n, 0.0) for p in phases)
        lines.append(f"  {n:<32}{seconds:>8.1f}{100 * seconds / wall:>10.1f}%")
    outside = [1 - p.get(TRAINING, 0.0) / w for p, w in zip(phases, walls)]
    lines.append(f"  outside training: {100 * statistics.fmean(outside):.1f}% of wall (per trial {min(outside):.0%}-{max(outside):.0%})")
    # The chosen artifact's whole-split score (inside "allocation: confirm") is the evaluation a submission runs
    # itself, at the stride the eval cap allows: what is left besides it is the search's own overhead.
    final = [t.user_attrs.get("eval_seconds", 0.0) for t in trials]
    beyond = [1 - (p.get(TRAINING, 0.0) + e) / w for p, e, w in zip(phases, final, walls)]
    lines.append(f"  of which the final whole-split score: {statistics.fmean(final):.1f} s, {100 * statistics.fmean(e / w for e, w in zip(final, walls)):.1f}%"
                 f"; outside training and that score: {100 * statistics.fmean(beyond):.1f}% (per trial {min(beyond):.0%}-{max(beyond):.0%})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+")
    parser.add_argument("--results", default=RESULTS_DIR)
    parser.add_argument("--trials", choices=("all", "originals", "reruns"), default="all",
                        help="all completed trials, or only the sampled ones, or only the re-runs")
    args = parser.parse_args()
    for name in args.studies:
        print(study_table(name, args.results, args.trials))


if __name__ == "__main__":
    main()
