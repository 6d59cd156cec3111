"""The evaluation settings chosen jointly vs one after another, on the demo study with TTT (and the n-gram tilt) open
to the allocation: the sequential arm is bench/spaces/demo_ttt.toml, the joint arm bench/spaces/demo_joint.toml
(the same plus eval_choice = "joint" and ngram_order = [0, 16] under [allocation]). Each arm is a real study
(`search run`) with the same sampler seed per seed; per arm and seed the table gives how many feasible trials chose
TTT and the tilt, the best feasible post-roundtrip bpb, and the chosen eval settings' seconds, read from the trials'
metrics.json under the results folder. Run nothing else while it measures: trials train and time their
evaluation under wallclock caps, so a busy machine trains fewer steps and predicts slower evaluations.

    python bench/eval_choice.py [--seeds 0,1] [--trials 3] [--arms sequential,joint] [--timeout 900] [--parallel]
                                [--table-only STUDY ...]
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "out", "results")
ARMS = {"sequential": os.path.join("bench", "spaces", "demo_ttt.toml"),
        "joint": os.path.join("bench", "spaces", "demo_joint.toml")}


def study_command(space: str, study: str, seed: int, trials: int, timeout: float) -> list[str]:
    return [sys.executable, "-m", "search.cli", "run", "--space", space, "--study", study, "--results", RESULTS,
            "--sampler-seed", str(seed), "--trials", str(trials), "--timeout", str(timeout)]


def trial_rows(study: str) -> list[dict]:
    """One row per trained trial of a study: feasibility, the chosen eval settings, bpb and eval seconds."""
    rows = []
    for path in sorted(glob.glob(os.path.join(RESULTS, study, "**", "metrics.json"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            metrics = json.load(f)
        evaluation = (metrics.get("config") or {}).get("eval", {})
        rows.append({"trial": os.path.relpath(os.path.dirname(path), os.path.join(RESULTS, study)),
                     "feasible": bool(metrics.get("feasible")), "bpb": metrics.get("val_bpb_post"),
                     "eval_seconds": metrics.get("eval_seconds"), "allocation_seconds": metrics.get("allocation_seconds"),
                     "trial_seconds": metrics.get("trial_seconds"), "ttt": evaluation.get("ttt", "off"),
                     "ttt_chunk": evaluation.get("ttt_chunk"), "ttt_rank": evaluation.get("ttt_rank"),
                     "ngram_order": evaluation.get("ngram_order", 0), "stride": evaluation.get("stride")})
    return rows


def summary(study: str) -> str:
    rows = trial_rows(study)
    feasible = [r for r in rows if r["feasible"] and r["bpb"] is not None]
    best = min(feasible, key=lambda r: r["bpb"], default=None)
    ttt = sum(r["ttt"] not in (None, "off") for r in feasible)
    tilt = sum(bool(r["ngram_order"]) for r in feasible)
    best_part = (f"{best['bpb']:.4f}  {best['eval_seconds']:6.1f}  stride {best['stride']} ttt {best['ttt']}"
                 f"{'' if best['ttt'] in (None, 'off') else ' c%s r%s' % (best['ttt_chunk'], best['ttt_rank'])} tilt {best['ngram_order']}"
                 if best else "-")
    return f"{study:34} {len(rows):>7} {len(feasible):>8} {ttt:>4} {tilt:>5}  {best_part}"


def print_table(studies: list[str]) -> None:
    print(f"{'study':34} {'trained':>7} {'feasible':>8} {'TTT':>4} {'tilt':>5}  best bpb  eval s  chosen eval settings")
    for study in studies:
        print(summary(study))
    print("\nper trial:")
    for study in studies:
        for r in trial_rows(study):
            print(f"  {study:34} {r['trial']:>14} feasible {str(r['feasible']):5} bpb "
                  f"{r['bpb'] if r['bpb'] is None else round(r['bpb'], 4)} eval s "
                  f"{r['eval_seconds'] if r['eval_seconds'] is None else round(r['eval_seconds'], 1)} alloc s "
                  f"{r['allocation_seconds'] if r['allocation_seconds'] is None else round(r['allocation_seconds'], 1)} "
                  f"stride {r['stride']} ttt {r['ttt']} c{r['ttt_chunk']} r{r['ttt_rank']} tilt {r['ngram_order']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--trials", type=int, default=5, help="finished trials per study (the first is the baseline)")
    parser.add_argument("--arms", default=",".join(ARMS), help="which arms to run (e.g. joint alone, after a change to it)")
    parser.add_argument("--timeout", type=float, default=900.0, help="stop starting trials after this many seconds")
    parser.add_argument("--parallel", action="store_true", help="run every arm and seed at once (a busy machine: fewer steps)")
    parser.add_argument("--table-only", nargs="+", metavar="STUDY", help="print the table of finished studies")
    args = parser.parse_args()
    if args.table_only:
        print_table(args.table_only)
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    jobs = [(f"choice-{stamp}-{arm}-{seed}", study_command(space, f"choice-{stamp}-{arm}-{seed}", seed, args.trials, args.timeout))
            for seed in [int(s) for s in args.seeds.split(",")] for arm, space in ARMS.items() if arm in args.arms.split(",")]
    started = time.time()
    if args.parallel:
        processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL) for _, command in jobs]
        failed = [name for (name, _), p in zip(jobs, processes) if p.wait() != 0]
    else:
        failed = [name for name, command in jobs if subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL).returncode != 0]
    if failed:
        print(f"studies that exited non-zero: {', '.join(failed)}", file=sys.stderr)
    print(f"{len(jobs)} studies, {args.trials} trials each, {time.time() - started:.0f} s wall"
          f"{' (all at once)' if args.parallel else ''}\n")
    print_table([name for name, _ in jobs])


if __name__ == "__main__":
    main()
