"""One rank against N ranks on the `tiny` config: the same sequences, each step's batch split over the ranks
(gloo on the CPU, NCCL on GPUs) and the gradients averaged, against one process running them all.

Printed: the training loss at steps 1, 10 and 50 (the log's loss is the step's over every rank), the final
post-roundtrip bpb and the wall time of each. A fixed step count, no wallclock cap.

    python bench/ranks_equality.py [--ranks 2] [--steps 50] [--device cpu]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pgolf.datasets import default_data_root  # noqa: E402

LOSS = re.compile(r"step (\d+)/\d+ train_loss (\S+)")


def run(ranks: int, steps: int, device: str, data: str, threads: int) -> dict:
    out = tempfile.mkdtemp(prefix=f"ranks{ranks}-")
    launcher = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 else [])
    command = launcher + ["-m", "pgolf.cli", "run", "tiny", "--data", data, "--device", device, "--out", os.path.join(out, "run"),
                          "--set", f"train.iterations={steps}", "--set", "train.max_wallclock_seconds=0", "--set", "train.log_every=10",
                          "--set", f"train.warmdown_iters={max(1, steps * 60 // 200)}"]
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    wall = time.time() - started
    if done.returncode != 0:
        raise SystemExit(f"{ranks} rank(s): {done.stderr.strip().splitlines()[-1]}")
    with open(os.path.join(out, "run", "train.log"), encoding="utf-8") as f:
        losses = {int(s): float(v) for s, v in LOSS.findall(f.read())}
    with open(os.path.join(out, "run", "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    return {"ranks": ranks, "losses": losses, "val_bpb_post": metrics["val_bpb_post"], "wall_seconds": wall,
            "train_seconds": metrics["train_seconds"], "world_size": metrics.get("world_size", 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default=default_data_root())
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    one = run(1, args.steps, args.device, args.data, cores)  # both arms use every core: one process, or one thread-share per rank
    many = run(args.ranks, args.steps, args.device, args.data, max(1, cores // args.ranks))
    print(f"tiny, {args.steps} steps, {args.device}: 1 rank vs {args.ranks} ranks (same batch per step, split over the ranks)")
    print(f"{'step':>6}{'1 rank':>10}{f'{args.ranks} ranks':>10}{'diff':>10}")
    for step in (1, 10, args.steps):
        a, b = one["losses"].get(step), many["losses"].get(step)
        if a is not None and b is not None:
            print(f"{step:>6}{a:>10.4f}{b:>10.4f}{b - a:>+10.4f}")
    print(f"{'bpb':>6}{one['val_bpb_post']:>10.4f}{many['val_bpb_post']:>10.4f}{many['val_bpb_post'] - one['val_bpb_post']:>+10.4f}")
    print(f"wall: {one['wall_seconds']:.0f} s (train {one['train_seconds']:.0f} s) vs {many['wall_seconds']:.0f} s "
          f"(train {many['train_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
