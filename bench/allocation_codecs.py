"""What counted code and the compressor choice buy the post-training allocation, paired on one checkpoint.

The official recipe's checkpoint (../shared/data/official_tiny/final_model.pt), seq_len 256, chunked eval, the
RTN knapsack of bench/allocation_vs_uniform.py's first row (bits 3-6, embedding 5/6/8, clip 12.85, per layer),
at 1,000,000 and 700,000 bytes, four ways:

    plain, zstd          the counted script as assembled, compressors [zstd] (the README's "knapsack, RTN only")
    plain, zstd+rans     the allocation may pack with rans (its decoder's code counted)
    compressed, zstd     quant.code = "compressed": the script counted in its self-extracting form
    compressed, zstd+rans

Same checkpoint, same held-out tokens, same options: only the bytes the code and the coder take differ.
Columns: artifact bytes (model + code), code bytes, the compressor the candidate kept, val bpb, seconds.

    python bench/allocation_codecs.py [CHECKPOINT] [--caps 1000000,700000] [--code plain|compressed]

Torch runs on BENCH_THREADS threads (default 1), as in bench/allocation_vs_uniform.py.
"""

import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pgolf.datasets import default_data_root  # noqa: E402
from search.allocation.command import allocate_checkpoint  # noqa: E402

OFFICIAL = os.path.join(default_data_root(), "official_tiny", "final_model.pt")
CAPS = (1_000_000, 700_000)
OPTIONS = {"bits": [3, 4, 5, 6], "embedding_bits": [5, 6, 8], "clip": [12.85], "granularity": "layer", "eval_stride": [0]}
VARIANTS = [("plain", ["zstd"]), ("plain", ["zstd", "rans"]), ("compressed", ["zstd"]), ("compressed", ["zstd", "rans"])]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", nargs="?", default=OFFICIAL)
    parser.add_argument("--caps", default=",".join(map(str, CAPS)))
    parser.add_argument("--code", choices=["plain", "compressed"], help="only the variants with this code form")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    path = args.checkpoint
    print(f"{path}: RTN knapsack, {OPTIONS}")
    print("| cap | code | compressors | artifact bytes | code bytes | kept | val bpb | seconds |")
    print("|---:|---|---|---:|---:|---|---:|---:|")
    for cap in [int(c) for c in args.caps.split(",")]:
        for code, compressors in [v for v in VARIANTS if args.code in (None, v[0])]:
            out = os.path.join(ROOT, "bench", "out", f"allocation-codecs-{cap}-{code}-{'+'.join(compressors)}")
            started = time.perf_counter()
            m = allocate_checkpoint(path, cap, out, default_data_root(), seq_len=256, replace=True, log=lambda line: None,
                                    options={**OPTIONS, "compressors": compressors}, code=code)
            print(f"| {cap:,} | {code} | {'+'.join(compressors)} | {m['artifact_bytes']:,} | {m['code_bytes']:,} | "
                  f"{m['config']['quant']['compressor']} | {m['val_bpb_post']:.5f} | {time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
