"""Search efficiency on a real training script, against how the field tunes: a script study over six variables of
bench/scripts/tiny_gpt.py (a small GPT trained on ../shared/data for --train-seconds a trial, scored after an
int8 + zlib round trip), each arm a real `search run` with the same wall budget:
  tpe     TPE with successive halving over the validation reports (the space's [search] pruner)
  random  random sampling, every trial trained to the cap
  greedy  greedy forward selection (search/greedy.py): one variable at a time in the space's order, keep the best
Only the pruning arm has the script validate during training (every 10 steps: the pruner's reports); the others
validate once, at the end, as a hand-tuned run would. Every arm starts from the same baseline trial (the script's own
defaults). The figure per arm and sampler seed is the best feasible post-roundtrip bpb among the trials that finished within the budget (trials still running when
the budget ends do not count, so no arm gets more than the budget). The arms of one seed run one after another, in
an order rotated per seed, so load on a shared machine falls on all of them alike; the load average is recorded
before and after each arm. Printed: the table, and the paired differences tpe - random and tpe - greedy with their
standard errors (bench/stats.py; negative = TPE better).

Each finished arm is appended to bench/records/script_efficiency.jsonl keyed by its settings and the script's and
space's content; a later sitting skips what is recorded.

    python bench/script_efficiency.py [--budget 360] [--seeds 0,1,2] [--train-seconds 10] [--table-only]
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.abspath(os.path.dirname(__file__)))
sys.path.insert(0, ROOT)

from bench.search_efficiency import _commit, cpu_name  # noqa: E402
from bench.stats import paired_difference  # noqa: E402
from search.study import open_existing_study  # noqa: E402

SCRIPT = os.path.join(ROOT, "bench", "scripts", "tiny_gpt.py")
RESULTS = os.path.join(ROOT, "bench", "out", "script_efficiency")
RECORDS = os.path.join(ROOT, "bench", "records", "script_efficiency.jsonl")
ARMS = {"tpe": ("tpe", "successive_halving"), "random": ("random", "none"), "greedy": ("greedy", "none")}

# Six variables in the order greedy visits them (the script's defaults, the baseline: 2, 64, 2, 0.01, 0.03, 2048).
DIMS = """
[dims.NUM_LAYERS]
choices = [1, 2, 3]

[dims.MODEL_DIM]
choices = [48, 64, 96]

[dims.MLP_MULT]
choices = [1, 2, 3]

[dims.MATRIX_LR]
low = 0.003
high = 0.03
log = true

[dims.EMBED_LR]
low = 0.01
high = 0.1
log = true

[dims.TRAIN_BATCH_TOKENS]
choices = [1024, 2048, 4096]
"""


def space_text(arm: str, data: str, train_seconds: float, artifact_cap: int) -> str:
    pruner = ARMS[arm][1]
    return f"""name = "script-eff-{arm}"
trials = 200

[script]
path = {json.dumps(SCRIPT)}
artifact = "final_model.int8.ptz"
report_every_seconds = 2.0

[script.env]
DATA_PATH = {json.dumps(os.path.join(data, "datasets", "fineweb_sample_sp1024"))}
TOKENIZER_PATH = {json.dumps(os.path.join(data, "tokenizers", "fineweb_1024_bpe.model"))}
NUM_THREADS = 1
VAL_LOSS_EVERY = {10 if pruner != "none" else 0}
TRAIN_LOG_EVERY = 1000
VAL_TOKENS = 16384
{DIMS}
[caps]
artifact_bytes = {artifact_cap}
train_seconds = {train_seconds:g}
eval_seconds = 60

[search]
pruner = "{pruner}"
min_seconds = 2.0
reduction_factor = 3
"""


def arm_key(arm: str, seed: int, args) -> str:
    with open(SCRIPT, "rb") as f:
        content = hashlib.sha256(f.read() + space_text(arm, "", args.train_seconds, args.artifact_cap).encode()).hexdigest()[:16]
    return f"{arm}|{seed}|{args.budget:g}s|{content}"


def run_arm(arm: str, seed: int, args, stamp: str) -> dict:
    folder = os.path.join(RESULTS, stamp)
    os.makedirs(folder, exist_ok=True)
    space = os.path.join(folder, f"space-{arm}.toml")
    with open(space, "w", encoding="utf-8") as f:
        f.write(space_text(arm, os.path.abspath(args.data), args.train_seconds, args.artifact_cap))
    name = f"{arm}-{seed}"
    load_before = os.getloadavg()
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "search.cli", "run", "--space", space, "--study", name, "--results", folder,
                           "--sampler", ARMS[arm][0], "--sampler-seed", str(seed), "--timeout", str(args.budget),
                           "--trials", "200", "--device", "cpu"],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.time() - started
    if done.returncode != 0:
        raise SystemExit(f"arm {arm} seed {seed}: search run failed: {done.stderr.strip().splitlines()[-1:]}")
    _, _, study = open_existing_study(name, folder)
    cut = started + args.budget
    within = [t for t in study.trials if t.datetime_complete is not None and t.datetime_complete.timestamp() <= cut]
    feasible = [t for t in within if t.state.name == "COMPLETE" and all(v <= 0 for v in t.constraints.values())]
    best = min(feasible, key=lambda t: t.values[0]) if feasible else None
    states = {}
    for t in within:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {"arm": arm, "seed": seed, "best_bpb": best.values[0] if best else None, "best_trial": best.number if best else None,
            "best_params": best.params if best else None, "baseline_bpb": next((t.values[0] for t in feasible if t.number == 0), None),
            "trials_within_budget": len(within), "states": states, "trials_started": len(study.trials),
            "seconds": round(seconds, 1), "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()], "study": os.path.join(folder, name)}


def load_records() -> dict:
    if not os.path.exists(RECORDS):
        return {}
    with open(RECORDS, encoding="utf-8") as f:
        return {r["key"]: r for r in (json.loads(line) for line in f if line.strip())}


def print_table(records: dict, keys: dict, arms: list[str], seeds: list[int], args) -> None:
    got = {k: records.get(v) for k, v in keys.items()}
    print(f"\nbest feasible post-roundtrip bpb within {args.budget:g} s per arm ({args.train_seconds:g} s of training a trial; "
          f"- = not run or none feasible):")
    print("  arm      " + "".join(f"  seed {s:<6d}" for s in seeds) + "  trials within budget (completed/pruned/failed)")
    for arm in arms:
        rows = [got[arm, s] for s in seeds]
        cells = "".join(f"  {r['best_bpb']:.4f}     " if r and r["best_bpb"] is not None else "  -          " for r in rows)
        counts = ", ".join(f"{r['states'].get('COMPLETE', 0)}/{r['states'].get('PRUNED', 0)}/{r['states'].get('FAIL', 0)}"
                           if r else "-" for r in rows)
        print(f"  {arm:8s}{cells}  {counts}")
    loads = [x for r in got.values() if r for x in (r["load_before"][0], r["load_after"][0])]
    if loads:
        print(f"  1-minute load average around the arms: {min(loads):.1f} to {max(loads):.1f} (2 CPU cores, shared)")
    for other in [a for a in arms if a != "tpe"] if "tpe" in arms else []:
        both = [s for s in seeds if got["tpe", s] and got[other, s] and got["tpe", s]["best_bpb"] is not None
                and got[other, s]["best_bpb"] is not None]
        if not both:
            continue
        mean, se, diffs = paired_difference([got[other, s]["best_bpb"] for s in both], [got["tpe", s]["best_bpb"] for s in both])
        print(f"  tpe - {other:7s} {mean:+.4f} ± {se:.4f} bpb (SE over {len(both)} seeds; per seed "
              + ", ".join(f"{d:+.4f}" for d in diffs) + ")")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=360.0, help="wall seconds of each arm")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arms", default="tpe,random,greedy")
    parser.add_argument("--train-seconds", type=float, default=10.0, help="each trial's training cap")
    parser.add_argument("--artifact-cap", type=int, default=300_000, help="bytes of script + artifact a trial may take")
    parser.add_argument("--data", default=os.environ.get("PGOLF_DATA", os.path.join(ROOT, "..", "shared", "data")))
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    arms, seeds = args.arms.split(","), [int(s) for s in args.seeds.split(",")]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {', '.join(unknown)} (use {', '.join(ARMS)})")
    keys = {(arm, seed): arm_key(arm, seed, args) for seed in seeds for arm in arms}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs; load average now {os.getloadavg()[0]:.1f}", flush=True)
    for i, seed in enumerate(seeds):
        for arm in arms[i % len(arms):] + arms[:i % len(arms)]:  # rotated per seed: no arm always runs first
            if args.table_only or keys[arm, seed] in load_records():
                continue
            row = dict(run_arm(arm, seed, args, stamp), key=keys[arm, seed], machine=cpu_name(), commit=_commit(),
                       budget=args.budget, train_seconds=args.train_seconds)
            os.makedirs(os.path.dirname(RECORDS), exist_ok=True)
            with open(RECORDS, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: row[k] for k in ("arm", "seed", "best_bpb", "best_trial", "trials_within_budget", "states",
                                                    "seconds", "load_before", "load_after")}), flush=True)
    print_table(load_records(), keys, arms, seeds, args)


if __name__ == "__main__":
    main()
