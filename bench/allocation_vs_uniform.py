"""The post-training allocation alone, on trained checkpoints: chosen per-unit bits vs the best uniform
width that fits the same cap (and the official int8 rule for reference).

Default cases: the official recipe's checkpoint (../shared/data/official_tiny) at a cap 30% below its
official int8+zlib submission size (2,508,613 bytes -> 1,756,029), and a trained tiny run at the demo
preset's 1,000,000-byte cap.

    python bench/allocation_vs_uniform.py [CHECKPOINT CAP ...]
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pgolf.datasets import default_data_root  # noqa: E402
from search.allocate_cmd import allocate_checkpoint, format_table  # noqa: E402
from space.spec import load_space  # noqa: E402

OFFICIAL_INT8_ZLIB_BYTES = 2_508_613  # official_tiny/train.log: total submission size int8+zlib


def main() -> None:
    args = sys.argv[1:]
    if args:
        cases = [(args[i], int(args[i + 1])) for i in range(0, len(args), 2)]
    else:
        cases = [(os.path.join(default_data_root(), "official_tiny", "final_model.pt"), int(OFFICIAL_INT8_ZLIB_BYTES * 0.7)),
                 (os.path.join(ROOT, "bench", "out", "tiny-seed1337"), 1_000_000)]
    demo = load_space("demo").allocation
    options = {"bits": demo.bits, "embedding_bits": demo.embedding_bits, "clip": demo.clip, "granularity": demo.granularity,
               "eval_stride": [0], "compressors": demo.compressors}
    for path, cap in cases:
        if not os.path.exists(path):
            print(f"skipping {path}: not found (run `pgolf run tiny --out {path}` first)")
            continue
        out = os.path.join(ROOT, "bench", "out", f"allocation-{os.path.basename(path.rstrip('/'))}-{cap}")
        print(f"\n{path} at a cap of {cap:,} bytes (chunked eval, so only storage differs):")
        metrics = allocate_checkpoint(path, cap, out, default_data_root(), seq_len=256, options=options, replace=True, log=lambda m: None)
        print(format_table(metrics))
        rows = {r["label"]: r for r in metrics["table"]}
        if "knapsack" in rows and "best uniform" in rows:
            print(f"knapsack - best uniform: {rows['knapsack']['val_bpb'] - rows['best uniform']['val_bpb']:+.4f} bpb "
                  f"({metrics['allocation_seconds']:.0f}s for the allocation)")


if __name__ == "__main__":
    main()
