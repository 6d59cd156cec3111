"""The allocation's two ways to find each unit's loss increase (`[allocation] sensitivity`, search/allocation/
sensitivity.py), paired on the same checkpoints and caps: `forward` (one forward over the held-out training
tokens per unit) against `fisher` (a diagonal-Fisher estimate from one backward pass). Prints, per checkpoint,
the post-roundtrip bpb and bytes of each method's knapsack and the seconds of its sensitivity phase, then the
paired difference fisher - forward (mean +- standard error over checkpoints).

    python bench/sensitivity_methods.py [--checkpoints CKPT ...] [--caps 700000 ...] [--formats rtn|all]

Default checkpoints: the official recipe's (official_tiny/final_model.pt, eval at 256 tokens) and the `tiny` runs
of bench/qat_pairs.py's arm A (bench/out/qat_runs/A-*/checkpoint.pgolf, 200 steps), each at every cap.
"""

import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.stats import paired_difference  # noqa: E402
from pgolf.datasets import default_data_root  # noqa: E402
from search.allocation.command import allocate_checkpoint  # noqa: E402

OPTIONS = {"bits": [3, 4, 5, 6], "embedding_bits": [5, 6, 8], "clip": [12.85], "granularity": "layer",
           "eval_stride": [0], "compressors": ["zstd"]}
FORMATS = {"rtn": {}, "all": {"quantizers": ["rtn", "gptq"], "ranks": [0, 4, 16], "awq": [0.0, 0.5]}}
METHODS = ("forward", "fisher")


def run(path: str, cap: int, method: str, formats: str) -> dict:
    name = os.path.basename(os.path.dirname(path)) if path.endswith("checkpoint.pgolf") else os.path.basename(path)
    out = os.path.join(ROOT, "bench", "out", "sensitivity_methods", f"{name}-{cap}-{formats}-{method}")
    metrics = allocate_checkpoint(path, cap, out, default_data_root(), seq_len=256, replace=True, log=lambda _: None,
                                  options={**OPTIONS, **FORMATS[formats], "sensitivity": method})
    with open(os.path.join(out, "allocation.json"), encoding="utf-8") as f:
        phases = json.load(f)["phases"]
    return {"bpb": metrics["val_bpb_post"], "bytes": metrics["artifact_bytes"], "seconds": phases["sensitivity"], "name": name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = [os.path.join(default_data_root(), "official_tiny", "final_model.pt")]
    default += sorted(glob.glob(os.path.join(ROOT, "bench", "out", "qat_runs", "A-*", "checkpoint.pgolf")))
    parser.add_argument("--checkpoints", nargs="+", default=default)
    parser.add_argument("--caps", nargs="+", type=int, default=[700_000])
    parser.add_argument("--formats", choices=sorted(FORMATS), default="rtn")
    args = parser.parse_args()
    print(f"{'checkpoint':<16} {'cap':>9}  {'forward bpb':>11} {'fisher bpb':>11}  {'bytes fwd / fisher':>21}  sensitivity s fwd / fisher")
    forward, fisher, speedups = [], [], []
    for path in args.checkpoints:
        for cap in args.caps:
            arms = {method: run(path, cap, method, args.formats) for method in METHODS}
            f, g = arms["forward"], arms["fisher"]
            forward.append(f["bpb"])
            fisher.append(g["bpb"])
            speedups.append(f["seconds"] / g["seconds"])
            print(f"{f['name']:<16} {cap:>9,}  {f['bpb']:>11.5f} {g['bpb']:>11.5f}  {f['bytes']:>10,} / {g['bytes']:>9,}  "
                  f"{f['seconds']:.1f} / {g['seconds']:.1f}", flush=True)
    mean, se, diffs = paired_difference(forward, fisher)
    print(f"fisher - forward: {mean:+.5f} +- {se:.5f} bpb over {len(diffs)} (checkpoint, cap) pairs; per pair "
          + ", ".join(f"{d:+.4f}" for d in diffs))
    print(f"sensitivity phase, forward / fisher: {min(speedups):.1f}x to {max(speedups):.1f}x")


if __name__ == "__main__":
    main()
