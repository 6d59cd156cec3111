"""Byte predictor error over a study: predicted (before training, from the calibration available then,
for the allocation the trial ended with) vs real artifact bytes; and whether any trained trial ended over
the cap by more than that error.

    python bench/predictor_error.py STUDY [--results results]
"""

import argparse
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from search.outputs.pages import scored_trials  # noqa: E402
from search.study import open_existing_study  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("study")
    parser.add_argument("--results", default="results")
    args = parser.parse_args()
    _, settings, study = open_existing_study(args.study, args.results)
    cap = settings.space["caps"]["artifact_bytes"]
    rows = [(t.number, t.user_attrs["predicted_bytes"], t.user_attrs["artifact_bytes"]) for t in scored_trials(study)
            if "predicted_bytes" in t.user_attrs]
    print(f"{'trial':>5} {'predicted':>10} {'real':>10} {'error':>7}")
    for number, predicted, real in rows:
        print(f"{number:>5} {predicted:>10,} {real:>10,} {(predicted - real) / real:>+7.2%}")
    errors = [abs(p - r) / r for _, p, r in rows]
    print(f"relative error over {len(rows)} trials: median {statistics.median(errors):.2%}, max {max(errors):.2%} (target <= 2%)")
    over = [(n, r) for n, _, r in rows if r > cap]
    print(f"trials over the {cap:,}-byte cap: {len(over)}" + (f" (worst by {max(r for _, r in over) / cap - 1:.2%})" if over else ""))


if __name__ == "__main__":
    main()
