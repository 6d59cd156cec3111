"""A tiny training script in the official train_gpt.py conventions, for script-mode tests.

It fits a vector to a noisy target by gradient descent (stdlib only, so it starts in milliseconds), reads
its settings from environment variables as the official script does, prints the official log lines, stores
its "model" as int8 + zlib and scores the round-tripped copy. Failure switches (FAIL_AT_STEP, FINAL_SCORE,
NO_FINAL, NO_ARTIFACT, PAD_ARTIFACT_BYTES) let tests produce each kind of broken run.
"""

import math
import os
import random
import struct
import sys
import time
import zlib


class Hyperparameters:
    seed = int(os.environ.get("SEED", 1337))
    run_id = os.environ.get("RUN_ID", "toy")
    iterations = int(os.environ.get("ITERATIONS", 40))
    val_loss_every = int(os.environ.get("VAL_LOSS_EVERY", 10))
    max_wallclock_seconds = float(os.environ.get("MAX_WALLCLOCK_SECONDS", 600.0))
    model_dim = int(os.environ.get("MODEL_DIM", 64))
    matrix_lr = float(os.environ.get("MATRIX_LR", 0.04))
    warmdown_iters = int(os.environ.get("WARMDOWN_ITERS", 10))
    tie_embeddings = bool(int(os.environ.get("TIE_EMBEDDINGS", "1")))
    step_sleep = float(os.environ.get("STEP_SLEEP", 0.0))  # seconds per step, to exercise wallclock caps
    # failure switches for the tests of script mode
    fail_at_step = int(os.environ.get("FAIL_AT_STEP", 0))
    final_score = os.environ.get("FINAL_SCORE", "")
    no_final = bool(int(os.environ.get("NO_FINAL", "0")))
    no_artifact = bool(int(os.environ.get("NO_ARTIFACT", "0")))
    pad_artifact_bytes = int(os.environ.get("PAD_ARTIFACT_BYTES", 0))


def loss_of(w, target):
    # mean squared error, shifted so a good fit lands near the challenge's bpb range
    return 2.0 + sum((a - b) ** 2 for a, b in zip(w, target)) / len(w)


def main():
    args = Hyperparameters()
    rng = random.Random(args.seed)
    target = [rng.gauss(0.0, 1.0) for _ in range(args.model_dim)]
    w = [0.0] * args.model_dim
    t0 = time.perf_counter()
    step = 0
    for step in range(1, args.iterations + 1):
        if step == args.fail_at_step:
            raise RuntimeError(f"simulated crash at step {step}")
        scale = min(1.0, (args.iterations - step + 1) / max(args.warmdown_iters, 1))
        lr = args.matrix_lr * 10 * scale
        w = [a - lr * 2 * (a - b + rng.gauss(0.0, 0.3)) for a, b in zip(w, target)]
        time.sleep(args.step_sleep)
        train_ms = 1000 * (time.perf_counter() - t0)
        print(f"step:{step}/{args.iterations} train_loss:{loss_of(w, target):.4f} train_time:{train_ms:.0f}ms "
              f"step_avg:{train_ms / step:.2f}ms", flush=True)
        if step % args.val_loss_every == 0 or step == args.iterations:
            val = loss_of(w, target)
            print(f"step:{step}/{args.iterations} val_loss:{val:.4f} val_bpb:{val / math.log(2):.4f} "
                  f"train_time:{train_ms:.0f}ms step_avg:{train_ms / step:.2f}ms", flush=True)
        if args.max_wallclock_seconds > 0 and train_ms >= 1000 * args.max_wallclock_seconds:
            print(f"stopping_early: wallclock_cap train_time:{train_ms:.0f}ms step:{step}/{args.iterations}", flush=True)
            break
    scale = max(abs(a) for a in w) / 127 or 1.0
    blob = zlib.compress(struct.pack(f"<f{len(w)}b", scale, *(round(a / scale) for a in w)), 9)
    blob += b"\0" * args.pad_artifact_bytes
    code_bytes = os.path.getsize(__file__)
    if not args.no_artifact:
        with open("final_model.int8.ptz", "wb") as f:
            f.write(blob)
    print(f"Serialized model int8+zlib: {len(blob)} bytes")
    print(f"Code size: {code_bytes} bytes")
    print(f"Total submission size int8+zlib: {len(blob) + code_bytes} bytes")
    t_eval = time.perf_counter()
    unpacked = struct.unpack(f"<f{len(w)}b", zlib.decompress(blob[: len(blob) - args.pad_artifact_bytes]))
    restored = [unpacked[0] * q for q in unpacked[1:]]
    val = loss_of(restored, target)
    bpb = float(args.final_score) if args.final_score else val / math.log(2)
    if not args.no_final:
        print(f"final_int8_zlib_roundtrip val_loss:{val:.4f} val_bpb:{bpb:.4f} "
              f"eval_time:{1000 * (time.perf_counter() - t_eval):.0f}ms")
        print(f"final_int8_zlib_roundtrip_exact val_loss:{val:.8f} val_bpb:{bpb:.8f}")


if __name__ == "__main__":
    main()
    sys.exit(0)
