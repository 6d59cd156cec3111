"""Training speed and quality of the `tiny` config on ../shared/data, against the official recipe.

Each variant runs in a fresh process, trains the tiny config (4 x 256, 4/2 heads, MLP 2x, sp1024,
seq 256, 8,192 tokens/step) for --steps steps and reports the median step time (first 5 steps excluded),
tokens/s and achieved matmul FLOP rate against this machine's measured bf16 matmul peak:
    pgolf            the shipped tiny config (one 8,192-token pass per step, CPU fast paths)
    pgolf-compiled   the same under torch.compile (compile time reported separately, not in step time)
    official-recipe  pgolf's modules driven the way the official train_gpt.py runs them: 8 micro-batches
                     of 1,024 tokens, the library SDPA and rms_norm kernels, the default allocator
Then `--quality` runs full 200-step `pgolf run tiny` trainings for the given seeds and prints their
pre-quantization and post-roundtrip bpb (the official recipe: 2.3867 / 2.3884 / 2.3894), and
`--official-quality` the same seeds with the official composition (train.fused_ops=false, eight
1,024-token micro-batches): the official recipe's own seed spread. Given both, it prints their per-seed
difference, paired: same data and same initial weights per seed, so only the numerics differ.

    python bench/train_speed.py [--steps 60] [--variants pgolf,official-recipe] [--quality 1337,1,2]
                                [--official-quality 1337,1,2]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TARGET_BPB = 2.392  # the quality target for the tiny config
OFFICIAL_MEDIAN_MS = 591.0  # the official recipe's median step on the reference machines (DESIGN.md)
# The official recipe's way of training, on pgolf's modules: its op composition and its eight 1,024-token
# micro-batches. (Its data cut, eight spans of 1,024 + 1 tokens per step, is pgolf's default: train.data_spans.)
OFFICIAL_COMPOSITION = ("train.fused_ops=false", "train.micro_batch_tokens=1024")


def matmul_peak_gflops() -> float:
    import torch

    best = 0.0
    for m, k, n in ((4096, 4096, 4096), (8192, 256, 1024)):
        a, b = torch.randn(m, k, dtype=torch.bfloat16), torch.randn(k, n, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        for _ in range(5):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - t) / 1e9)
    return best


def step_flops(config) -> float:
    """Matmul FLOPs of one training step: 6 x (matrix params incl. the output head) x tokens, plus attention."""
    from objectives.bytes import tensor_infos

    m, t = config.model, config.train
    virtual = m.num_layers + m.loop_len * (m.loop_repeats - 1)
    per_layer = {}
    for info in tensor_infos(m):
        if info.role == "matrix":
            layer = int(info.name.split(".")[1])
            per_layer[layer] = per_layer.get(layer, 0) + info.numel
    unique = sum(per_layer.values())
    looped = sum(per_layer.get(i, 0) for i in range(m.loop_start, m.loop_start + m.loop_len)) * (m.loop_repeats - 1)
    head = m.vocab_size * m.model_dim
    attention = 2 * 2 * t.seq_len * m.model_dim * virtual  # QK^T and AV per token, forward
    return t.batch_tokens * (6 * (unique + looped + head) + 3 * attention)


def worker(variant: str, steps: int) -> dict:
    """One variant in this process: train `steps` steps, time each."""
    import torch
    import torch.nn.functional as F

    import pgolf.model as model_module
    from pgolf.cli import apply_overrides
    from pgolf.configfiles import resolve_config
    from pgolf.datasets import default_data_root, resolve_data
    from pgolf.model import GPT
    from pgolf.shards import BatchLoader
    from pgolf.train import keep_freed_memory, train

    config = resolve_config("tiny")
    config.train.iterations = steps
    config.train.log_every = 0
    if variant == "official-recipe":
        config = apply_overrides(config, list(OFFICIAL_COMPOSITION))
        model_module.rms_norm = lambda x: F.rms_norm(x, (x.size(-1),))
    else:
        keep_freed_memory()
    if variant == "pgolf-compiled":
        config.train.compile = "on"
        config.train.warmup_steps = 2
    data = resolve_data(default_data_root(), 1024)
    torch.manual_seed(config.train.seed)
    model = GPT(config.model)
    loader = BatchLoader(data.train_pattern, 1024, 0, 1, torch.device("cpu"))
    started = time.perf_counter()
    result = train(model, config.train, loader, torch.device("cpu"), log=lambda m: None)
    durations = result.step_seconds[5:] or result.step_seconds  # the first steps warm caches and allocators
    return {"variant": variant, "steps": result.steps, "median_ms": 1000 * statistics.median(durations),
            "mean_ms": 1000 * result.train_seconds / result.steps, "setup_s": time.perf_counter() - started - result.train_seconds,
            "flops_per_step": step_flops(config), "tokens_per_step": config.train.batch_tokens}


def quality(seeds: list[int], settings: tuple = (), name: str = "tiny") -> list[dict]:
    rows = []
    for seed in seeds:
        out = os.path.join(ROOT, "bench", "out", f"{name}-seed{seed}")
        overrides = [arg for setting in (f"train.seed={seed}", *settings) for arg in ("--set", setting)]
        subprocess.run([sys.executable, "-m", "pgolf.cli", "run", "tiny", *overrides, "--out", out, "--force"],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        with open(os.path.join(out, "metrics.json")) as f:
            m = json.load(f)
        rows.append({"seed": seed, "pre": m["val_bpb_pre"], "post": m["val_bpb_post"], "ms_per_step": m["ms_per_step"],
                     "bytes": m["artifact_bytes"]})
        print(f"  seed {seed}: val_bpb pre {m['val_bpb_pre']:.4f} post {m['val_bpb_post']:.4f}, {m['ms_per_step']:.0f} ms/step "
              f"(200 steps, incl. first steps), {m['artifact_bytes']:,} bytes", flush=True)
    return rows


def speed(variants: str, steps: int) -> None:
    peak = matmul_peak_gflops()
    print(f"bf16 matmul peak on this machine: {peak:.0f} GFLOP/s (2 threads)")
    results = {}
    for variant in variants.split(","):
        out = subprocess.run([sys.executable, __file__, "--worker", variant, "--steps", str(steps)], cwd=ROOT,
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results[variant] = r
        achieved = r["flops_per_step"] / (r["median_ms"] / 1000) / 1e9
        print(f"{variant:16s} {r['median_ms']:6.0f} ms/step (median of {r['steps']}; mean {r['mean_ms']:.0f}), "
              f"{r['tokens_per_step'] / (r['median_ms'] / 1000):,.0f} tokens/s, {achieved:.0f} GFLOP/s = {achieved / peak:.0%} of peak"
              + (f", setup/compile {r['setup_s']:.0f}s" if variant == "pgolf-compiled" else ""), flush=True)
    if "official-recipe" in results:
        for variant, r in results.items():
            if variant != "official-recipe":
                print(f"{variant} is {results['official-recipe']['median_ms'] / r['median_ms']:.2f}x the official recipe's speed "
                      f"on this machine (target 1.5x; absolute target <= {OFFICIAL_MEDIAN_MS / 1.5:.0f} ms/step)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--variants", default="pgolf,official-recipe,pgolf-compiled")
    parser.add_argument("--quality", default="", help="comma-separated seeds for full 200-step runs")
    parser.add_argument("--official-quality", default="", help="seeds for 200-step runs in the official composition")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps)))
        return
    if args.variants:
        speed(args.variants, args.steps)
    posts = {}
    for seeds, settings, name, label in ((args.quality, (), "tiny", "pgolf"),
                                         (args.official_quality, OFFICIAL_COMPOSITION, "tiny-official", "official composition")):
        if seeds:
            print(f"quality, tiny config, 200 steps, {label} (official recipe: post 2.3867 / 2.3884 / 2.3894; "
                  f"target <= {TARGET_BPB}):")
            rows = quality([int(s) for s in seeds.split(",")], settings, name)
            posts[label] = {r["seed"]: r["post"] for r in rows}
            values = list(posts[label].values())
            print(f"  post-roundtrip mean {statistics.fmean(values):.4f}, min {min(values):.4f}, max {max(values):.4f}"
                  + (f", std {statistics.stdev(values):.4f}" if len(values) > 1 else "")
                  + f"; {sum(v <= TARGET_BPB for v in values)} of {len(values)} seeds within the target")
    if len(posts) == 2:
        # Both arms see the same data and the same initial weights per seed, so the per-seed difference
        # isolates the numerics from the (much larger) seed-to-seed variation.
        common = sorted(set(posts["pgolf"]) & set(posts["official composition"]))
        diffs = [posts["pgolf"][s] - posts["official composition"][s] for s in common]
        if len(diffs) > 1:
            print(f"pgolf minus official composition, paired over {len(diffs)} seeds: {statistics.fmean(diffs):+.4f} "
                  f"+- {statistics.stdev(diffs) / len(diffs) ** 0.5:.4f} (standard error)")


if __name__ == "__main__":
    main()
