"""The frontier record's shape shrunk to the demo caps (pgolf/configs/frontier_tiny.toml) against the `tiny`
baseline at equal wall time: each trains for the demo's training cap, then the demo's post-training
allocation stores it under the demo's byte cap, as a demo trial would; paired over seeds.

A short probe measures each config's step time first, so that each warmdown covers its own recipe's
fraction of the steps the cap allows (tiny 30%, the record 85%). The cap makes the figures depend on
machine load: run nothing else while it measures.

    python bench/record_shape.py [--seeds 1337 1338 1339] [--seconds 40]
"""

import argparse
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.stats import paired_difference  # noqa: E402
from pgolf.cli import apply_overrides  # noqa: E402
from pgolf.configfiles import resolve_config  # noqa: E402
from pgolf.datasets import default_data_root, resolve_data  # noqa: E402
from pgolf.run import run  # noqa: E402
from search.allocation.command import allocate_checkpoint  # noqa: E402
from space.spec import load_space  # noqa: E402

ARMS = {"tiny": 0.3, "frontier_tiny": 0.85}  # config -> warmdown fraction of its recipe


def trained(name: str, seed: int, seconds: float, data_root: str, out: str) -> dict:
    base = resolve_config(name)
    data = resolve_data(data_root, base.model.vocab_size)
    probe = apply_overrides(base, ["train.iterations=12", "train.warmdown_iters=0", "train.log_every=0", f"train.seed={seed}"])
    m = run(probe, data, os.path.join(out, "probe"), device="cpu", force=True, echo=False)
    steps = seconds / (m.train_seconds / m.steps)
    config = apply_overrides(base, ["train.iterations=100000", f"train.max_wallclock_seconds={seconds}", f"train.seed={seed}",
                                    f"train.warmdown_iters={max(1, round(ARMS[name] * steps))}", "train.log_every=0"])
    return run(config, data, os.path.join(out, "run"), device="cpu", force=True, echo=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338, 1339])
    parser.add_argument("--seconds", type=float, default=0.0, help="training seconds (default: the demo's cap)")
    parser.add_argument("--data", default=default_data_root())
    args = parser.parse_args()
    demo = load_space("demo")
    seconds = args.seconds or demo.caps.train_seconds
    options = {k: getattr(demo.allocation, k) for k in ("bits", "embedding_bits", "clip", "eval_repeats", "eval_stride", "compressors")}
    rows = {}
    for seed in args.seeds:
        for name in ARMS:
            with tempfile.TemporaryDirectory() as out:
                m = trained(name, seed, seconds, args.data, out)
                a = allocate_checkpoint(os.path.join(out, "run"), demo.caps.artifact_bytes, os.path.join(out, "alloc"), args.data,
                                        seq_len=m.config["train"]["seq_len"], eval_seconds=demo.caps.eval_seconds, options=options,
                                        device="cpu", log=lambda *_: None)
            rows[name, seed] = {"steps": m.steps, "pre": m.val_bpb_pre, "post": a["val_bpb_post"], "bytes": a["artifact_bytes"],
                                "chosen": a["chosen"]}
            print(f"{name:<14} seed {seed}: {m.steps} steps, pre {m.val_bpb_pre:.4f}, at the cap {a['val_bpb_post']:.4f} "
                  f"({a['artifact_bytes']:,} bytes, {a['chosen']})", flush=True)
    mean, se, diffs = paired_difference([rows["tiny", s]["post"] for s in args.seeds], [rows["frontier_tiny", s]["post"] for s in args.seeds])
    for name in ARMS:
        got = [rows[name, s] for s in args.seeds]
        print(f"mean {name}: {statistics.mean(r['post'] for r in got):.4f} bpb at {demo.caps.artifact_bytes:,} bytes, "
              f"{statistics.mean(r['steps'] for r in got):.0f} steps in {seconds:g} s")
    print(f"frontier_tiny - tiny: {mean:+.4f} +- {se:.4f} bpb (n={len(diffs)}; per seed "
          + ", ".join(f"{d:+.4f}" for d in diffs) + ")")


if __name__ == "__main__":
    main()
