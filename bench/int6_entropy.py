"""Bytes per weight of int6 matrices under zstd-22, next to the order-0 entropy of the symbols.

Takes a trained tiny run (default: trains one with `pgolf run tiny` into bench/out/tiny-seed1337),
stores its matrices as int6 (clip k x row std, per-row fp16 scales; the embedding too), packs with
zstd-22 and lzma, reloads and scores. Prints, per tensor group: weights, compressed bytes, bytes per
weight, entropy bytes and the ratio (target <= 1.02x), and the post-roundtrip minus pre-quant gap.

    python bench/int6_entropy.py [RUN_DIR] [--clip 12.85]
"""

import argparse
import dataclasses
import os
import subprocess
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pgolf.artifact import pack  # noqa: E402
from pgolf.checkpoint import load_checkpoint  # noqa: E402
from pgolf.config import QuantConfig  # noqa: E402
from pgolf.datasets import default_data_root, resolve_data  # noqa: E402
from pgolf.quant import tensor_group  # noqa: E402
from pgolf.storage import quantize_state_dict  # noqa: E402
from pgolf.submission import Runtime, load_model, model_meta, score  # noqa: E402


def entropy_bits(q: np.ndarray) -> float:
    counts = np.bincount(q.reshape(-1).astype(np.int64) + 128, minlength=256)
    p = counts[counts > 0] / q.size
    return float(-(p * np.log2(p)).sum()) * q.size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", nargs="?", default=os.path.join(ROOT, "bench", "out", "tiny-seed1337"))
    parser.add_argument("--clip", type=float, default=12.85)
    args = parser.parse_args()
    if not os.path.exists(os.path.join(args.run, "checkpoint.pgolf")):
        subprocess.run([sys.executable, "-m", "pgolf.cli", "run", "tiny", "--out", args.run, "--force"], check=True, cwd=ROOT)
    model, config = load_checkpoint(os.path.join(args.run, "checkpoint.pgolf"))
    data = resolve_data(default_data_root(), config.model.vocab_size)
    runtime = Runtime(torch.device("cpu"))
    pre = score(model, config.resolved_eval(), data.val_pattern, data.tokenizer, runtime)
    quant = QuantConfig(bits={"*": 6}, clip={"*": args.clip}, keep_float_max_numel=0, compressor="zstd", level=22)
    stored = quantize_state_dict(model.state_dict(), quant)
    config = dataclasses.replace(config, quant=quant)
    print(f"int6, clip {args.clip:g} x row std, every matrix (embedding included), per-row fp16 scales")
    for compressor, level in (("zstd", 22), ("lzma", 9)):
        blob, sizes = pack(stored, model_meta(config), compressor, level)
        print(f"\n{compressor}-{level}: model file {len(blob):,} bytes")
        print(f"{'group':10s} {'weights':>10s} {'bytes':>10s} {'bytes/w':>8s} {'entropy B':>10s} {'ratio':>6s}")
        total_w = total_b = total_h = 0
        for group in ("embedding", "attention", "mlp"):
            entries = [e for e in stored if e.kind == "int" and tensor_group(e.name) == group]
            weights = sum(e.q.size for e in entries)
            h = sum(entropy_bits(e.q) for e in entries) / 8
            total_w, total_b, total_h = total_w + weights, total_b + sizes[group], total_h + h
            print(f"{group:10s} {weights:>10,} {sizes[group]:>10,} {sizes[group] / weights:>8.4f} {h:>10,.0f} {sizes[group] / h:>6.3f}")
        print(f"{'all':10s} {total_w:>10,} {total_b:>10,} {total_b / total_w:>8.4f} {total_h:>10,.0f} {total_b / total_h:>6.3f}"
              f"   ({8 * total_b / total_w:.2f} bits/weight; scales and control tensors: {sizes['other']:,} bytes)")
        if compressor == "zstd":
            fresh, _, eval_cfg = load_model(blob, runtime.device)
            post = score(fresh, eval_cfg, data.val_pattern, data.tokenizer, runtime)
    print(f"\nval_bpb pre-quant {pre.bpb:.4f}, post-roundtrip {post.bpb:.4f}, gap {post.bpb - pre.bpb:+.4f}")


if __name__ == "__main__":
    main()
