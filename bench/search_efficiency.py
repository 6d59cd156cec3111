"""Search efficiency at an equal wall budget on the demo preset: TPE with multi-fidelity (successive halving
over the validation reports, the demo space plus a [search] table) vs TPE as the demo ships vs random
sampling (all with the post-training allocation) vs the baseline-shaped config alone, per sampler seed.

Each arm is a real study (`search run`) stopped from starting trials after --budget seconds; the figure is
its best feasible post-roundtrip bpb. The baseline arm runs the enqueued baseline trial only. Printed: each
arm's best per seed and mean, and on how many seeds TPE with multi-fidelity beats random sampling.

Each finished arm is appended to bench/records/search_efficiency.jsonl, keyed by the arm, seed, budget,
trial count and the demo space's content; a later sitting skips what is recorded (an arm takes ~11 min at
600 s), so the seeds can be run across sittings on idle machines. The table is printed from the records.

    python bench/search_efficiency.py [--budget 600] [--seeds 0,1,2,3] [--max-trials 30] [--arms tpe-mf,tpe,random,baseline] [--table-only]
"""

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from search.coordinator import best_feasible  # noqa: E402
from search.study import open_existing_study  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "out", "results")
RECORDS = os.path.join(ROOT, "bench", "records", "search_efficiency.jsonl")


def run_arm(name: str, extra: list[str], space: str = "demo") -> dict:
    started = time.time()
    subprocess.run([sys.executable, "-m", "search.cli", "run", "--space", space, "--study", name, "--results", RESULTS] + extra,
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, _, study = open_existing_study(name, RESULTS)
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


def arm_key(arm: str, seed: int, budget: float, max_trials: int) -> str:
    """What makes two runs of an arm the same measurement: its settings and the demo space's text."""
    from space.spec import load_space

    with open(load_space("demo").source, "rb") as f:
        space = hashlib.sha256(f.read() + MULTI_FIDELITY.encode()).hexdigest()[:16]
    budget_part = "1 trial" if arm == "baseline" else f"{budget:g}s/{max_trials}"
    return f"{arm}|{seed}|{budget_part}|{space}"


def load_records() -> dict:
    if not os.path.exists(RECORDS):
        return {}
    with open(RECORDS, encoding="utf-8") as f:
        return {r["key"]: r for r in (json.loads(line) for line in f if line.strip())}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=600.0)
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--arms", default="tpe-mf,tpe,random,baseline")
    # More trials than the budget allows, so the budget decides; the count also sets TPE's random startup
    # trials (a quarter of it, at most 10), which must leave TPE room to model the space within the budget.
    parser.add_argument("--max-trials", type=int, default=30)
    parser.add_argument("--table-only", action="store_true", help="print the recorded arms, run nothing")
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    arms = args.arms.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    budget = ["--timeout", str(args.budget), "--trials", str(args.max_trials)]
    keys = {(arm, seed): arm_key(arm, seed, args.budget, args.max_trials) for seed in seeds for arm in arms}
    for seed in seeds:
        for arm in arms:
            if args.table_only or keys[arm, seed] in load_records():
                continue
            name = f"eff-{stamp}-{arm}-{seed}"
            if arm == "baseline":
                row = run_arm(name, ["--trials", "1"])
            else:
                sampler = ["--sampler", "random" if arm == "random" else "tpe", "--sampler-seed", str(seed)]
                row = run_arm(name, sampler + budget, multi_fidelity_space() if arm == "tpe-mf" else "demo")
            row = dict(row, arm=arm, seed=seed, key=keys[arm, seed], machine=cpu_name(), commit=_commit())
            os.makedirs(os.path.dirname(RECORDS), exist_ok=True)
            with open(RECORDS, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    records = load_records()
    best = {(arm, seed): records[keys[arm, seed]]["best_bpb"] if keys[arm, seed] in records else None for arm, seed in keys}
    trials = {(arm, seed): records[keys[arm, seed]]["trials"] if keys[arm, seed] in records else None for arm, seed in keys}
    print(f"\nbest feasible post-roundtrip bpb, {args.budget:.0f} s of starting trials per arm (seeds {seeds}; - = not run or none feasible):")
    for arm in arms:
        values = [best[arm, s] for s in seeds]
        scored = [v for v in values if v is not None]
        print(f"  {arm:9s} " + "  ".join(f"{v:.4f}" if v is not None else "   -  " for v in values)
              + (f"   mean {statistics.fmean(scored):.4f} (n={len(scored)})" if scored else "")
              + f"   (trials: {[trials[arm, s] for s in seeds]})")
    if "tpe-mf" in arms and "random" in arms:
        both = [s for s in seeds if best["tpe-mf", s] is not None and best["random", s] is not None]
        wins = sum(best["tpe-mf", s] < best["random", s] for s in both)
        print(f"  tpe-mf beats random on {wins} of {len(both)} seeds with both arms recorded")


if __name__ == "__main__":
    main()
