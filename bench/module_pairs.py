"""Each model / training switch alone on the shipped `tiny` config against the same config without it,
paired over seeds: mean post-roundtrip bpb, paired difference +- standard error, ms/step, artifact bytes.

200 steps and no wallclock cap, so bpb and bytes do not depend on machine load (ms/step does: run
nothing else while measuring it). The loop switches (per-repeat LoRA deltas, repeat-boundary norm) are
paired against a looped `tiny` (blocks 1-2 shared, run twice), the others against `tiny` itself.
Finished runs are appended to bench/records/module_pairs.jsonl (one line per arm and seed, with the
commit), and a run already recorded for the same config is not repeated, so the table can be built over
several sittings. --shard i/n runs every n-th missing run, for n processes side by side (each set to
one thread; ms/step is then per process).

    python bench/module_pairs.py [--seeds 1337 1338 1339 1340 1341] [--arms xsa,ema ...] [--shard 0/2]
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.stats import paired_difference  # noqa: E402
from pgolf.cli import apply_overrides  # noqa: E402
from pgolf.config import RunConfig, config_to_dict  # noqa: E402
from pgolf.configfiles import resolve_config  # noqa: E402
from pgolf.datasets import default_data_root, resolve_data  # noqa: E402
from pgolf.run import run  # noqa: E402

RECORDS = os.path.join(ROOT, "bench", "records", "module_pairs.jsonl")
LOOPED = ["model.loop_start=1", "model.loop_len=2", "model.loop_repeats=2"]
# arm -> (reference arm, overrides). Values follow the records where they transfer to 4 blocks x 256 and
# 200 steps (EMA decay scaled to the run length: a horizon of ~20 steps, as 0.9965 is ~6% of a record run).
ARMS = {
    "tiny": (None, []),
    "parallel_last=2": ("tiny", ["model.parallel_last=2"]),
    "xsa_last=4": ("tiny", ["model.xsa_last=4"]),
    "smear_gate": ("tiny", ["model.smear_gate=true"]),
    "leaky_slope=0.5": ("tiny", ["model.mlp_leaky_slope=0.5"]),
    "rotary_fraction=0.25": ("tiny", ["model.rotary_fraction=0.25"]),
    "qk_gain_init=5": ("tiny", ["model.qk_gain_init=5.0"]),
    "ln_scale": ("tiny", ["model.ln_scale=true"]),
    "attn_gate=sparse": ("tiny", ['model.attn_gate="sparse"']),
    "logit_rescale": ("tiny", ["model.logit_rescale=true"]),
    "embed_rank=64": ("tiny", ["model.embed_rank=64"]),
    "ema_decay=0.95": ("tiny", ["train.ema_decay=0.95"]),
    "seq_len_stages=64,128": ("tiny", ["train.seq_len_stages=[64, 128]"]),
    "weight_decay=0.04": ("tiny", ["train.weight_decay=0.04"]),
    "lr_floor=0.1": ("tiny", ["train.lr_floor=0.1"]),
    "muon_ns=polar_express": ("tiny", ['train.muon_ns="polar_express"']),
    "looped": (None, LOOPED),
    "loop_lora_rank=4": ("looped", LOOPED + ["model.loop_lora_rank=4"]),
    "loop_boundary_norm": ("looped", LOOPED + ["model.loop_boundary_norm=true"]),
}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def arm_config(arm: str, seed: int):
    return apply_overrides(resolve_config("tiny"), ARMS[arm][1] + [f"train.seed={seed}"])


def config_key(config) -> str:
    """A digest of the config's values that differ from the defaults: a record counts only for the config it
    was measured with, and a key added later (off by default) does not invalidate it."""
    defaults = config_to_dict(RunConfig())
    changed = {f"{section}.{key}": value for section, values in config_to_dict(config).items()
               for key, value in values.items() if defaults[section].get(key) != value}
    return hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:16]


def load_records() -> list[dict]:
    if not os.path.exists(RECORDS):
        return []
    with open(RECORDS, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def run_one(arm: str, seed: int, data_root: str) -> dict:
    config = arm_config(arm, seed)
    data = resolve_data(data_root, config.model.vocab_size)
    with tempfile.TemporaryDirectory() as out:
        m = run(config, data, out, device="cpu", force=True, echo=False)
    return {"arm": arm, "seed": seed, "overrides": ARMS[arm][1], "config_key": config_key(config), "commit": commit(), "val_bpb_post": m.val_bpb_post,
            "val_bpb_pre": m.val_bpb_pre, "artifact_bytes": m.artifact_bytes, "steps": m.steps,
            "ms_per_step": 1000 * m.train_seconds / max(m.steps, 1), "threads": int(os.environ.get("OMP_NUM_THREADS", 0) or 0)}


def table(records: list[dict], seeds: list[int], arms: list[str], markdown: bool = False, ms_seeds: list[int] | None = None) -> str:
    """ms_seeds: the seeds whose ms/step are averaged (default: all), e.g. those measured on an otherwise idle machine."""
    def find(arm, seed):
        key = config_key(arm_config(arm, seed))
        return next((r for r in reversed(records) if r["arm"] == arm and r["seed"] == seed and r["config_key"] == key), None)

    if markdown:
        lines = ["| switch | against | n | post-roundtrip bpb | paired diff ± se | ms/step | artifact bytes |", "|---|---|---|---|---|---|---|"]
    else:
        lines = [f"{'switch':<24}{'vs':<7}{'n':>3}{'post bpb':>10}{'diff':>10}{'+- se':>8}{'ms/step':>9}{'bytes':>11}"]
    for arm in arms:
        ref = ARMS[arm][0]
        both = [(find(ref, s) if ref else None, find(arm, s)) for s in seeds]
        rows = [(b, o) for b, o in both if o and (b or not ref)]
        if not rows:
            lines.append(f"| `{arm}` | {ref or ''} | 0 | | | | |" if markdown else f"{arm:<24}{ref or '':<7}{0:>3}")
            continue
        mean_bpb = statistics.mean(o["val_bpb_post"] for _, o in rows)
        timed = [o["ms_per_step"] for _, o in rows if ms_seeds is None or o["seed"] in ms_seeds]
        ms = statistics.mean(timed) if timed else float("nan")
        nbytes = statistics.mean(o["artifact_bytes"] for _, o in rows)
        diff = se = ""
        if ref:
            d, e, _ = paired_difference([b["val_bpb_post"] for b, _ in rows], [o["val_bpb_post"] for _, o in rows])
            diff, se = f"{d:+.4f}", f"{e:.4f}"
        if markdown:
            lines.append(f"| `{arm}` | {ref or ''} | {len(rows)} | {mean_bpb:.4f} | {diff.replace('-', '−')}{' ± ' + se if se else ''} "
                         f"| {ms:.0f} | {nbytes:,.0f} |")
        else:
            lines.append(f"{arm:<24}{ref or '':<7}{len(rows):>3}{mean_bpb:>10.4f}{diff:>10}{se:>8}{ms:>9.0f}{nbytes:>11,.0f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338, 1339, 1340, 1341])
    parser.add_argument("--arms", default="", help="comma-separated arms (default: all); their references run too")
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th missing run, starting at i")
    parser.add_argument("--data", default=default_data_root())
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="print the table as the README's markdown")
    parser.add_argument("--ms-seeds", type=int, nargs="+", help="average ms/step over these seeds only (default: all)")
    args = parser.parse_args()
    arms = [a for a in args.arms.split(",") if a] or list(ARMS)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown} (known: {', '.join(ARMS)})")
    wanted = list(dict.fromkeys([ARMS[a][0] for a in arms if ARMS[a][0]] + arms))
    index, count = (int(v) for v in args.shard.split("/"))
    if not args.table_only:
        done = {(r["arm"], r["seed"], r["config_key"]) for r in load_records()}
        todo = [(arm, seed) for seed in args.seeds for arm in wanted if (arm, seed, config_key(arm_config(arm, seed))) not in done]
        for arm, seed in todo[index::count]:
            print(f"running {arm} seed {seed} ...", flush=True)
            record = run_one(arm, seed, args.data)
            os.makedirs(os.path.dirname(RECORDS), exist_ok=True)
            with open(RECORDS, "a", encoding="utf-8") as f:  # one line per write: shards append side by side
                f.write(json.dumps(record) + "\n")
    print(f"tiny, 200 steps, seeds {args.seeds}; diff = switch - reference, paired over seeds")
    print(table(load_records(), args.seeds, [a for a in wanted], args.markdown, args.ms_seeds))


if __name__ == "__main__":
    main()
