"""Proxy -> full-budget extrapolation (search/budget/extrapolate.py) on configurations sampled from the demo space.

Each configuration trains twice from the same seed at a fixed compute budget (steps, no wallclock cap, so the
figures do not depend on how busy the machine is): a proxy of --proxy steps with validation reports every
--every steps, and the full --full steps. The proxy's warmdown is the sampled one scaled by proxy/full (the
same fraction of training). Printed: Spearman rank correlation of the proxy's post-roundtrip bpb with the
full run's, and of the extrapolated bpb with it; median absolute error of the extrapolated bpb (and of the
proxy's own, for scale). The gap's growth exponent is fitted leave-one-out: each configuration's prediction
uses the exponent of the others.

Finished runs go to bench/records/extrapolation.jsonl (resumable; --shard i/n splits the runs between processes).

    python bench/extrapolation.py [--configs 10] [--proxy 50] [--full 200] [--every 5] [--shard 0/2] [--table-only]
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

import optuna  # noqa: E402

from pgolf.config import config_from_dict, config_to_dict  # noqa: E402
from pgolf.datasets import default_data_root, resolve_data  # noqa: E402
from pgolf.run import run  # noqa: E402
from search.budget.extrapolate import extrapolate, fit_gap_growth, spearman  # noqa: E402
from space.sample import suggest_config  # noqa: E402
from space.spec import load_space  # noqa: E402

RECORDS = os.path.join(ROOT, "bench", "records", "extrapolation.jsonl")


def sampled_configs(count: int, seed: int) -> list[dict]:
    space = load_space("demo")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configs = []
    for _ in range(count):
        trial = study.ask()
        configs.append(config_to_dict(suggest_config(space, trial)[0]))
        study.tell(trial, 0.0)
    return configs


def budgeted(config: dict, steps: int, full: int, every: int) -> dict:
    c = json.loads(json.dumps(config))
    c["train"].update(iterations=steps, max_wallclock_seconds=0.0, val_every_seconds=0.0, val_every=every if steps < full else 0,
                      warmdown_iters=max(1, round(config["train"]["warmdown_iters"] * steps / full)))
    return c


def config_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def run_one(index: int, budget: str, config: dict, data_root: str) -> dict:
    cfg = config_from_dict(config)
    with tempfile.TemporaryDirectory() as out:
        m = run(cfg, resolve_data(data_root, cfg.model.vocab_size), out, device="cpu", force=True, echo=False)
    return {"config": index, "key": config_key(config), "budget": budget, "steps": m.steps, "val_bpb_pre": m.val_bpb_pre, "val_bpb_post": m.val_bpb_post,
            "val_history": m.val_history, "warmup": cfg.train.lr_warmup_steps, "warmdown_iters": cfg.train.warmdown_iters,
            "ms_per_step": m.ms_per_step, "train": config["train"], "model": config["model"], "commit": _commit()}


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def load_records() -> list[dict]:
    if not os.path.exists(RECORDS):
        return []
    with open(RECORDS, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def table(records: list[dict], configs: list[dict], proxy: int, full: int, every: int) -> str:
    count = len(configs)
    keys = {(i, b): config_key(budgeted(configs[i], proxy if b == "proxy" else full, full, every)) for i in range(count) for b in ("proxy", "full")}
    runs = {(r["config"], r["budget"]): r for r in records if r["config"] < count and r["key"] == keys[r["config"], r["budget"]]}
    done = [i for i in range(count) if (i, "proxy") in runs and (i, "full") in runs]
    if len(done) < 3:
        return f"{len(done)} configurations have both runs: too few to rank"
    gaps = {i: (runs[i, "proxy"]["val_bpb_post"] - runs[i, "proxy"]["val_bpb_pre"],
                runs[i, "full"]["val_bpb_post"] - runs[i, "full"]["val_bpb_pre"]) for i in done}
    lines = [f"{'cfg':>3} {'shape':<26} {'proxy':>8} {'extrap.':>8} {'full':>8} {'error':>8}"]
    proxies, predictions, fulls = [], [], []
    for i in done:
        p, f = runs[i, "proxy"], runs[i, "full"]
        gamma = fit_gap_growth([gaps[j] for j in done if j != i], full / proxy)  # leave this configuration out
        warmdown_start = p["steps"] - p["warmdown_iters"]
        prediction = extrapolate(p["val_history"], p["warmup"], warmdown_start, p["steps"], full, p["val_bpb_post"], gaps[i][0], gamma)
        m = p["model"]
        shape = f"{m['num_layers']}x{m['model_dim']} mlp{m['mlp_mult']:g} sp{m['vocab_size']}" + (f" loop{m['loop_repeats']}" if m["loop_repeats"] > 1 else "")
        lines.append(f"{i:>3} {shape:<26} {p['val_bpb_post']:>8.4f} {prediction['post']:>8.4f} {f['val_bpb_post']:>8.4f} "
                     f"{prediction['post'] - f['val_bpb_post']:>+8.4f}")
        proxies.append(p["val_bpb_post"])
        predictions.append(prediction["post"])
        fulls.append(f["val_bpb_post"])
    lines += [f"{len(done)} configurations, proxy {proxy} steps, full {full} steps; gap growth exponent (all): "
              f"{fit_gap_growth(list(gaps.values()), full / proxy):.2f}",
              f"Spearman proxy vs full {spearman(proxies, fulls):+.3f}; extrapolated vs full {spearman(predictions, fulls):+.3f}",
              f"median |extrapolated - full| {statistics.median(abs(a - b) for a, b in zip(predictions, fulls)):.4f} bpb "
              f"(|proxy - full| {statistics.median(abs(a - b) for a, b in zip(proxies, fulls)):.4f})"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="random sampler seed choosing the configurations")
    parser.add_argument("--proxy", type=int, default=50)
    parser.add_argument("--full", type=int, default=200)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--shard", default="0/1")
    parser.add_argument("--data", default=default_data_root())
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    configs = sampled_configs(args.configs, args.seed)
    if not args.table_only:
        done = {(r["config"], r["budget"], r["key"]) for r in load_records()}
        todo = [(i, b) for i in range(args.configs) for b in ("proxy", "full")
                if (i, b, config_key(budgeted(configs[i], args.proxy if b == "proxy" else args.full, args.full, args.every))) not in done]
        index, count = (int(v) for v in args.shard.split("/"))
        # By configuration, so that each shard runs proxies and full runs alike (splitting the interleaved list
        # gave one shard every proxy and the other every 4x longer full run).
        for i, budget in [(i, b) for i, b in todo if i % count == index]:
            steps = args.proxy if budget == "proxy" else args.full
            print(f"config {i} {budget} ({steps} steps) ...", flush=True)
            record = run_one(i, budget, budgeted(configs[i], steps, args.full, args.every), args.data)
            os.makedirs(os.path.dirname(RECORDS), exist_ok=True)
            with open(RECORDS, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
    print(table(load_records(), configs, args.proxy, args.full, args.every))


if __name__ == "__main__":
    main()
