"""The local backend with the Optuna pruner against the tune backend with Tune's ASHA: the same space, sampler
seed and trial count; trials stopped early, best feasible bpb, and the distributed path's overhead (seconds from
`search run` to the first trial process starting; per trial, from the coordinator's launch to its process start).

Both arms stop trials by the same [search] rungs (first after --min-seconds of training, one in
--reduction-factor goes on), fed by the same validation reports. The tune arm runs on a Ray this script starts
on this machine (a local cluster), or on --address.

    python bench/backends_compared.py [--space tests/spaces/micro.toml] [--trials 12] [--workers 2] [--seed 0]
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

from optuna.trial import TrialState  # noqa: E402

from search.coordinator import best_feasible  # noqa: E402
from search.study import open_existing_study  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "out", "results")


def space_with_rungs(space: str, min_seconds: float, reduction_factor: int) -> str:
    from space.spec import load_space

    with open(load_space(space).source, encoding="utf-8") as f:
        text = f.read()
    if "\n[search]" in text:
        raise SystemExit(f"{space} has a [search] table of its own: this bench sets one")
    path = os.path.join(RESULTS, "backends_compared_space.toml")
    os.makedirs(RESULTS, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + f'\n[search]\npruner = "successive_halving"\nmin_seconds = {min_seconds}\nreduction_factor = {reduction_factor}\n')
    return path


def run_arm(name: str, space: str, extra: list[str]) -> dict:
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "search.cli", "run", "--space", space, "--study", name, "--results", RESULTS] + extra,
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name}: {done.stderr.strip().splitlines()[-1]}")
    wall = time.time() - started
    directory, _, study = open_existing_study(name, RESULTS)
    trained = [t for t in study.trials if t.user_attrs.get("stage") not in ("rejected", None)]
    starts, startups = [], []
    for t in trained:
        folder = os.path.join(directory, "trials", f"{t.number:04d}")
        with open(os.path.join(folder, "request.json"), encoding="utf-8") as f:
            launched = json.load(f)["launched_at"]
        startup = (t.user_attrs.get("phases") or {}).get("start-up")
        if startup is None and os.path.exists(os.path.join(folder, "placement.json")):  # a pruned trial: its process start
            startup = os.path.getmtime(os.path.join(folder, "placement.json")) - launched
        if startup is not None:
            starts.append(launched + startup)
            startups.append(startup)
    best = best_feasible(study)
    stopped = [t for t in trained if t.state == TrialState.PRUNED and t.user_attrs.get("stage") == "pruned"]
    return {"study": name, "trials": len(study.trials), "trained": len(trained), "stopped_early": len(stopped),
            "rejected": sum(t.user_attrs.get("stage") == "rejected" for t in study.trials),
            "best_bpb": best.values[0] if best else None, "wall_seconds": wall,
            "to_first_trial_seconds": min(starts) - started if starts else None,
            "startup_median_seconds": statistics.median(startups) if startups else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--space", default=os.path.join(ROOT, "tests", "spaces", "micro.toml"))
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--reduction-factor", type=int, default=3)
    parser.add_argument("--address", help="a Ray cluster for the tune arm (default: a Ray started on this machine)")
    args = parser.parse_args()
    space = space_with_rungs(args.space, args.min_seconds, args.reduction_factor)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    common = ["--trials", str(args.trials), "--workers", str(args.workers), "--sampler-seed", str(args.seed)]
    arms = {"local + Optuna successive halving": run_arm(f"bk-{stamp}-local", space, common),
            "tune + ASHA": run_arm(f"bk-{stamp}-tune", space, common + ["--backend", "tune", "--scheduler", "asha"]
                                   + (["--address", args.address] if args.address else []))}
    print(f"{'arm':<36}{'trained':>8}{'stopped':>8}{'rejected':>9}{'best bpb':>10}{'wall s':>8}{'to 1st s':>9}{'start-up s':>11}")
    for name, row in arms.items():
        best = f"{row['best_bpb']:.4f}" if row["best_bpb"] is not None else "-"
        print(f"{name:<36}{row['trained']:>8}{row['stopped_early']:>8}{row['rejected']:>9}{best:>10}{row['wall_seconds']:>8.0f}"
              f"{row['to_first_trial_seconds'] or float('nan'):>9.1f}{row['startup_median_seconds'] or float('nan'):>11.2f}")
    print(json.dumps(arms, indent=2))


if __name__ == "__main__":
    main()
