"""A records-style training script for script-mode tests: the log variants the 2026 records print.

Progress as `N/M val_loss: X val_bpb: Y`, the stop line with spaces, `diagnostic ...` lines that carry a
val_bpb before the final `quantized_ttt_phased` line, `total_eval_time`, a compressed code size and a
`Total submission size quantized+...` line. It imports a helper module from its own folder (a counted file).
"""

import math
import os
import random
import time
import zlib
from os import environ

from records_helper import smooth

ITERATIONS = int(environ.get("ITERATIONS", 30))
VAL_LOSS_EVERY = int(environ.get("VAL_LOSS_EVERY", 10))
MAX_WALLCLOCK_SECONDS = float(os.getenv("MAX_WALLCLOCK_SECONDS", "600"))
EMA_DECAY = float(environ.get("EMA_DECAY", 0.9))
QK_GAIN_INIT = float(environ.get("QK_GAIN_INIT", 5.0))
TTT_ENABLED = bool(int(environ.get("TTT_ENABLED", "1")))
COMPRESSOR = environ.get("COMPRESSOR", "zlib")
SEED = int(os.environ["SEED"]) if "SEED" in os.environ else 42
DATA_DIR = environ.get("DATA_DIR", os.path.join(".", "data"))


def main():
    rng = random.Random(SEED)
    losses, t0 = [], time.perf_counter()
    for step in range(1, ITERATIONS + 1):
        losses.append(3.0 / (1 + step * QK_GAIN_INIT / 50) + rng.random() * 0.05)
        minutes = (time.perf_counter() - t0) / 60
        print(f"{step}/{ITERATIONS} train_loss: {losses[-1]:.4f} train_time: {minutes:.1f}m tok/s: 1000", flush=True)
        if step % VAL_LOSS_EVERY == 0:
            print(f"{step}/{ITERATIONS} val_loss: {losses[-1]:.4f} val_bpb: {losses[-1] / math.log(2) / 2:.4f}", flush=True)
    train_ms = 1000 * (time.perf_counter() - t0)
    print(f"stopping_early: wallclock_cap train_time: {train_ms:.0f}ms step: {ITERATIONS}/{ITERATIONS}")
    final = smooth(losses, EMA_DECAY)[-1]
    print(f"diagnostic pre-quantization post-ema val_loss:{final:.8f} val_bpb:{final / math.log(2) / 2:.8f} eval_time:3ms")
    blob = zlib.compress(repr(losses).encode(), 9)
    with open("final_model.int6.ptz", "wb") as f:
        f.write(blob)
    print(f"Code size (compressed): {len(zlib.compress(open(__file__, 'rb').read()))} bytes")
    print(f"Total submission size quantized+{COMPRESSOR}: {len(blob) + 1000} bytes")
    quantized = final * 1.01
    print(f"diagnostic quantized val_loss:{quantized:.8f} val_bpb:{quantized / math.log(2) / 2:.8f} eval_time:5ms")
    if TTT_ENABLED:
        ttt = quantized * 0.99
        print(f"quantized_ttt_phased val_loss:{ttt:.8f} val_bpb:{ttt / math.log(2) / 2:.8f} eval_time:7ms")
    print("total_eval_time:0.1s")


if __name__ == "__main__":
    main()
