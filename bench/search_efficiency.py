"""Search efficiency at an equal wall budget: TPE vs random sampling (both with the post-training
allocation) vs the baseline-shaped config alone, 2 sampler seeds each, on the demo preset.

Each arm is a real study (`search run`) stopped from starting trials after --budget seconds; the figure is
its best feasible post-roundtrip bpb. The baseline arm runs the enqueued baseline trial only.

    python bench/search_efficiency.py [--budget 600] [--seeds 0,1] [--max-trials 20]
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from search.coordinator import best_feasible  # noqa: E402
from search.runner import startup_trials  # noqa: E402
from search.study import load_settings, open_study  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "out", "results")


def run_arm(name: str, extra: list[str], space: str = "demo") -> dict:
    started = time.time()
    subprocess.run([sys.executable, "-m", "search.cli", "run", "--space", space, "--study", name, "--results", RESULTS] + extra,
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, settings = load_settings(name, RESULTS)
    study = open_study(settings, startup_trials(settings.trials), create=False)
    best = best_feasible(study)
    return {"arm": name, "space": space, "best_bpb": best.values[0] if best else None, "best_trial": best.number if best else None,
            "trials": len(study.trials), "seconds": time.time() - started}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=600.0)
    parser.add_argument("--seeds", default="0,1")
    # More trials than the budget allows, so the budget decides; the count also sets TPE's random startup
    # trials (a quarter of it), which must leave TPE room to model the space within the budget.
    parser.add_argument("--max-trials", type=int, default=20)
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for sampler in ("tpe", "random"):
            rows.append(run_arm(f"eff-{stamp}-{sampler}-{seed}", ["--sampler", sampler, "--sampler-seed", str(seed),
                                                                 "--timeout", str(args.budget), "--trials", str(args.max_trials)]))
            print(json.dumps(rows[-1]), flush=True)
        rows.append(run_arm(f"eff-{stamp}-baseline-{seed}", ["--trials", "1"]))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nbest feasible post-roundtrip bpb, {args.budget:.0f} s of starting trials per arm:")
    for arm in ("tpe", "random", "baseline"):
        values = [r["best_bpb"] for r in rows if f"-{arm}-" in r["arm"]]
        print(f"  {arm:9s} " + "  ".join(f"{v:.4f}" if v is not None else "-" for v in values)
              + f"   (trials: {[r['trials'] for r in rows if f'-{arm}-' in r['arm']]})")


if __name__ == "__main__":
    main()
