"""Two search spaces at an equal wall budget and the same sampler seed: best feasible post-roundtrip bpb of
each. Used for the demo preset against the same study with the storage formats open to its allocation
(bench/spaces/demo_formats.toml), and for the demo against the demo with new model dimensions.

Each arm is a real study (`search run`) that stops starting trials after --budget seconds. Run nothing else
while it measures: trials train under a wallclock cap, so a busy machine trains fewer steps.

    python bench/spaces_compared.py [--a demo] [--b bench/spaces/demo_formats.toml] [--budget 600] [--seeds 0]
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.search_efficiency import run_arm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--a", default="demo", help="first space: a preset name or a file")
    parser.add_argument("--b", default=os.path.join("bench", "spaces", "demo_formats.toml"), help="second space")
    parser.add_argument("--budget", type=float, default=600.0)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--max-trials", type=int, default=20, help="more than the budget allows, so the budget decides")
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for tag, space in (("a", args.a), ("b", args.b)):
            rows.append(run_arm(f"spaces-{stamp}-{tag}-{seed}", ["--sampler-seed", str(seed), "--timeout", str(args.budget),
                                                                 "--trials", str(args.max_trials)], space=space))
            rows[-1]["seed"] = seed
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nbest feasible post-roundtrip bpb, {args.budget:.0f} s of starting trials per arm:")
    for tag, space in (("a", args.a), ("b", args.b)):
        arm = [r for r in rows if r["space"] == space and f"-{tag}-" in r["study"]]
        print(f"  {space:40s} " + "  ".join(f"{r['best_bpb']:.4f}" if r["best_bpb"] is not None else "-" for r in arm)
              + f"   (trials: {[r['trials'] for r in arm]}, seeds {[r['seed'] for r in arm]})")
    pairs = [(a["best_bpb"], b["best_bpb"]) for a, b in zip(rows[0::2], rows[1::2]) if a["best_bpb"] and b["best_bpb"]]
    if pairs:
        diffs = [b - a for a, b in pairs]
        print("  b - a per seed: " + "  ".join(f"{d:+.4f}" for d in diffs))


if __name__ == "__main__":
    main()
