"""What issue 31's bytes buy at the demo's cap: the demo study (space/presets/demo.toml) as it ships, against the same
study counting its code plain and packing with zstd and lzma alone (the demo before compressed code and rans). The
"without" space is written from the preset by replacing those two lines, so a change of the preset reaches both arms.
Same sampler seed per seed and the same trial count: per arm and seed, the best feasible post-roundtrip bpb and its
bytes, then the paired difference over the seeds. Run nothing else while it measures (trials train under wallclock
caps).

    python bench/bytes_demo.py [--seeds 0,1] [--trials 6] [--timeout 900]
"""

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "out", "results")
PRESET = os.path.join(ROOT, "space", "presets", "demo.toml")
WITH_LINES = ('code = "compressed"', 'compressors = ["zstd", "lzma", "rans"]')
WITHOUT_LINES = ('code = "plain"', 'compressors = ["zstd", "lzma"]')


def without_space(folder: str) -> str:
    with open(PRESET, encoding="utf-8") as f:
        text = f.read()
    for old, new in zip(WITH_LINES, WITHOUT_LINES):
        if old not in text:
            raise SystemExit(f"error: {PRESET} no longer holds the line {old!r} this bench replaces")
        text = text.replace(old, new)
    path = os.path.join(folder, "demo_without.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace('name = "demo"', 'name = "demo-without"'))
    return path


def best_feasible(study: str) -> dict | None:
    best = None
    for path in glob.glob(os.path.join(RESULTS, study, "trials", "*", "metrics.json")):
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
        if m.get("feasible") and m.get("val_bpb_post") is not None and (best is None or m["val_bpb_post"] < best["bpb"]):
            best = {"bpb": m["val_bpb_post"], "bytes": m.get("artifact_bytes"), "code": m.get("code_bytes")}
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    os.makedirs(RESULTS, exist_ok=True)
    arms = {"with": PRESET, "without": without_space(os.path.join(ROOT, "bench", "out"))}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for arm, space in arms.items():
            study = f"bytes-{stamp}-{arm}-{seed}"
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "search.cli", "run", "--space", space, "--study", study, "--results", RESULTS,
                            "--sampler-seed", str(seed), "--trials", str(args.trials), "--timeout", str(args.timeout)],
                           cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            rows[(arm, seed)] = best_feasible(study)
            best = rows[(arm, seed)]
            print(f"seed {seed} {arm:8} {study}: best feasible bpb {best['bpb']:.4f} at {best['bytes']:,} bytes (code "
                  f"{best['code']:,}), {time.perf_counter() - started:.0f} s" if best else f"seed {seed} {arm}: no feasible trial",
                  flush=True)
    diffs = [rows[("with", s)]["bpb"] - rows[("without", s)]["bpb"] for s in {k[1] for k in rows}
             if rows.get(("with", s)) and rows.get(("without", s))]
    if diffs:
        mean = sum(diffs) / len(diffs)
        se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs)) if len(diffs) > 1 else float("nan")
        print(f"with - without, best feasible bpb: {mean:+.4f} +- {se:.4f} (mean +- SE over {len(diffs)} seeds)")


if __name__ == "__main__":
    main()
