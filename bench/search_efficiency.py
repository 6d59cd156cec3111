"""Search efficiency at an equal wall budget on the demo preset: TPE with multi-fidelity (successive halving
over the validation reports, the demo space plus a [search] table) vs TPE as the demo ships vs random
sampling (all with the post-training allocation) vs the baseline-shaped config alone, per sampler seed.

Each arm is a real study (`search run`) stopped from starting trials after --budget seconds; the figure is
its best feasible post-roundtrip bpb. The baseline arm runs the enqueued baseline trial only. Printed: each
arm's best per seed and mean, and on how many seeds TPE with multi-fidelity beats random sampling.

    python bench/search_efficiency.py [--budget 600] [--seeds 0,1,2,3] [--max-trials 30] [--arms tpe-mf,tpe,random,baseline]
"""

import argparse
import json
import os
import statistics
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
    return {"study": name, "space": space, "best_bpb": best.values[0] if best else None, "best_trial": best.number if best else None,
            "trials": len(study.trials), "seconds": time.time() - started}


# The multi-fidelity arm: a first rung after 10 s of training (the first report), one in three goes on.
MULTI_FIDELITY = '\n[search]\npruner = "successive_halving"\nmin_seconds = 10.0\nreduction_factor = 3\n'


def multi_fidelity_space() -> str:
    from space.spec import load_space

    path = os.path.join(RESULTS, "demo_multi_fidelity.toml")
    os.makedirs(RESULTS, exist_ok=True)
    with open(load_space("demo").source, encoding="utf-8") as f:
        text = f.read()
    if "\n[search]" in text:
        raise SystemExit("space/presets/demo.toml has a [search] table of its own: merge MULTI_FIDELITY into it here")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace('name = "demo"', 'name = "demo-mf"', 1) + MULTI_FIDELITY)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=600.0)
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--arms", default="tpe-mf,tpe,random,baseline")
    # More trials than the budget allows, so the budget decides; the count also sets TPE's random startup
    # trials (a quarter of it, at most 10), which must leave TPE room to model the space within the budget.
    parser.add_argument("--max-trials", type=int, default=30)
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    arms = args.arms.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    budget = ["--timeout", str(args.budget), "--trials", str(args.max_trials)]
    rows = []
    for seed in seeds:
        for arm in arms:
            name = f"eff-{stamp}-{arm}-{seed}"
            if arm == "baseline":
                row = run_arm(name, ["--trials", "1"])
            else:
                sampler = ["--sampler", "random" if arm == "random" else "tpe", "--sampler-seed", str(seed)]
                row = run_arm(name, sampler + budget, multi_fidelity_space() if arm == "tpe-mf" else "demo")
            rows.append(dict(row, arm=arm, seed=seed))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nbest feasible post-roundtrip bpb, {args.budget:.0f} s of starting trials per arm:")
    best = {(r["arm"], r["seed"]): r["best_bpb"] for r in rows}
    for arm in arms:
        values = [best[arm, s] for s in seeds]
        scored = [v for v in values if v is not None]
        print(f"  {arm:9s} " + "  ".join(f"{v:.4f}" if v is not None else "-" for v in values)
              + (f"   mean {statistics.fmean(scored):.4f}" if scored else "")
              + f"   (trials: {[r['trials'] for r in rows if r['arm'] == arm]})")
    if "tpe-mf" in arms and "random" in arms:
        wins = sum(best["tpe-mf", s] is not None and (best["random", s] is None or best["tpe-mf", s] < best["random", s]) for s in seeds)
        print(f"  tpe-mf beats random on {wins} of {len(seeds)} seeds")


if __name__ == "__main__":
    main()
