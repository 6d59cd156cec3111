"""A 1-rank engine trial against an N-rank one (search/ranks.py) of the same configuration and step budget: the
micro space's baseline point, a fixed step count (no wallclock cap), each in a one-trial study of its own on the
local backend (gloo on the CPU). Printed: the training loss at steps 1, 10 and 50 (the log's loss is the step's
over every rank), the final post-roundtrip bpb, the trial's tokens per pass, peak memory and wall time.

    python bench/ranks_trials.py [--ranks 2] [--steps 60] [--results /tmp/ranks-trials]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(ROOT, "tests", "spaces", "micro.toml")
LOSS = re.compile(r"step (\d+)/\d+ train_loss (\S+)")


def space(results: str, steps: int) -> str:
    with open(MICRO, encoding="utf-8") as f:
        text = f.read()
    for old, new in (("train_seconds = 3.0", "train_seconds = 600.0"), ("iterations = 100000", f"iterations = {steps}"),
                     ("val_every_seconds = 1.0", "val_every_seconds = 0.0"), ("log_every = 0", "log_every = 10"),
                     ("reserve_seconds = 0.3", "reserve_seconds = 0.0")):
        text = text.replace(old, new)
    path = os.path.join(results, "steps.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def trial(results: str, space_path: str, ranks: int) -> dict:
    name = f"ranks{ranks}"
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "search.cli", "run", "--space", space_path, "--study", name, "--trials", "1",
                           "--ranks-per-trial", str(ranks), "--results", results], capture_output=True, text=True, cwd=ROOT)
    wall = time.time() - started
    if done.returncode != 0:
        raise SystemExit(f"{ranks} rank(s): {(done.stderr or done.stdout).strip().splitlines()[-1]}")
    folder = os.path.join(results, name, "trials", "0000")
    with open(os.path.join(folder, "train.log"), encoding="utf-8") as f:
        losses = {int(s): float(v) for s, v in LOSS.findall(f.read())}
    with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    with open(os.path.join(folder, "placement.json"), encoding="utf-8") as f:
        placement = json.load(f)
    return {"ranks": ranks, "losses": losses, "bpb": metrics["val_bpb_post"], "steps": metrics["steps"], "wall_s": wall,
            "pass_tokens": placement["pass_tokens"], "peak_mib": placement["peak_memory_bytes"] / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--results", default="/tmp/ranks-trials")
    args = parser.parse_args()
    os.makedirs(args.results, exist_ok=True)
    path = space(args.results, args.steps)
    rows = [trial(args.results, path, 1), trial(args.results, path, args.ranks)]
    print(f"{'ranks':>5} {'steps':>5} {'loss@1':>8} {'loss@10':>8} {'loss@50':>8} {'final bpb':>10} {'pass tok':>8} {'peak MiB':>8} {'wall s':>7}")
    for r in rows:
        loss = [f"{r['losses'].get(s, float('nan')):8.4f}" for s in (1, 10, 50)]
        print(f"{r['ranks']:>5} {r['steps']:>5} {' '.join(loss)} {r['bpb']:10.4f} {r['pass_tokens']:>8} {r['peak_mib']:8.0f} {r['wall_s']:7.1f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
