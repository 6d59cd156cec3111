"""Evaluation beside a busy neighbour: the plain score and the TTT score of one checkpoint, each timed alone and
beside another 2-thread `pgolf score` (plain) that runs in a loop the whole time, for each environment variant.
The slowdown is (time beside) / (time alone); TTT should degrade no worse than the plain score does.

    python bench/ttt_neighbour.py [--checkpoint PATH] [--variants libgomp,pgolf] [--repeats 2] [--set eval.KEY=V ...]

The seconds are the scores' own (`pgolf score` prints them; process start-up is left out). The neighbour always
runs with libgomp's default spin, as another user's job would. Run nothing else while measuring.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pgolf.datasets import default_data_root  # noqa: E402

TTT = ["--set", "eval.ttt=lora", "--set", "eval.ttt_chunk=256", "--set", "eval.ttt_rank=4"]
# What each variant sets in the measured process's environment. pgolf sets GOMP_SPINCOUNT=1000 itself when neither
# OpenMP variable is set (pgolf/__init__.py); "libgomp" is the library's own default, as before that setting.
LIBGOMP_DEFAULT = {"GOMP_SPINCOUNT": "300000"}
VARIANTS = {
    "pgolf": {},
    "libgomp": LIBGOMP_DEFAULT,
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},  # the OpenMP workers sleep at once instead of spinning
    "threads1": {"OMP_NUM_THREADS": "1"},
    "spin10k": {"GOMP_SPINCOUNT": "10000"},
}


def without_openmp_settings() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}


def score_command(checkpoint: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "pgolf.cli", "score", checkpoint, "--seq-len", "256", "--precision", "fp32", *extra]


def timed_score(checkpoint: str, extra: list[str], env: dict) -> float:
    out = subprocess.run(score_command(checkpoint, extra), cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"precision, ([0-9.]+)s\)", out).group(1))


class Neighbour:
    """A plain 2-thread score in a loop, started before and stopped after the measurement beside it."""

    def __init__(self, checkpoint: str):
        env = {**without_openmp_settings(), "OMP_NUM_THREADS": "2", **LIBGOMP_DEFAULT}
        loop = f"while true; do {' '.join(score_command(checkpoint, []))} > /dev/null; done"
        self.process = subprocess.Popen(["bash", "-c", loop], cwd=ROOT, env=env, start_new_session=True)
        time.sleep(5)  # past its start-up: scoring when the measured run starts

    def stop(self) -> None:
        os.killpg(self.process.pid, 9)
        self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=os.path.join(default_data_root(), "official_tiny", "final_model.pt"))
    parser.add_argument("--variants", default="libgomp,pgolf")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="extra eval.KEY=VALUE for the TTT score")
    args = parser.parse_args()
    ttt = TTT + [a for s in args.set for a in ("--set", s)]
    print(f"checkpoint {args.checkpoint}; TTT: {' '.join(ttt[1::2])}; {args.repeats} repeats, median seconds")
    print(f"{'variant':<10} {'mode':<6} {'alone s':>8} {'beside s':>9} {'slowdown':>9}")
    for name in args.variants.split(","):
        env = {**without_openmp_settings(), "OMP_NUM_THREADS": "2", **VARIANTS[name]}
        for mode, extra in (("plain", []), ("ttt", ttt)):
            alone = statistics.median(timed_score(args.checkpoint, extra, env) for _ in range(args.repeats))
            neighbour = Neighbour(args.checkpoint)
            try:
                beside = statistics.median(timed_score(args.checkpoint, extra, env) for _ in range(args.repeats))
            finally:
                neighbour.stop()
            print(f"{name:<10} {mode:<6} {alone:>8.2f} {beside:>9.2f} {beside / alone:>8.1f}x", flush=True)


if __name__ == "__main__":
    main()
