"""A training script that only says where it ran, for the tests of GPUs shared out among concurrent trials
(tests/test_devices.py): each rank prints the CUDA_VISIBLE_DEVICES and OMP_NUM_THREADS it was started with and
when it started, holds for HOLD_SECONDS (so that trials overlap), and rank 0 writes an artifact and prints the
official final lines. FAIL=1 makes it exit non-zero. Stdlib only: it needs no GPU to see its device list."""

import os
import sys
import time

rank = int(os.environ.get("RANK", "0"))
hold_seconds = float(os.environ.get("HOLD_SECONDS", 0.0))
lr = float(os.environ.get("LR", 0.5))
fail = int(os.environ.get("FAIL", 0))
seed = int(os.environ.get("SEED", 1337))
max_wallclock_seconds = float(os.environ.get("MAX_WALLCLOCK_SECONDS", 600.0))



def say(line: str) -> None:
    sys.stdout.write(line + "\n")  # one write: the ranks share the output pipe, unbuffered (print writes the newline apart)
    sys.stdout.flush()


say(f"where rank:{rank} cuda_visible_devices:{os.environ.get('CUDA_VISIBLE_DEVICES', '')} "
    f"omp_num_threads:{os.environ.get('OMP_NUM_THREADS', '')} started:{time.time():.3f}")
time.sleep(hold_seconds)
if fail:
    sys.exit(f"simulated failure on rank {rank}")
if rank == 0:
    with open("final_model.bin", "wb") as f:
        f.write(bytes(range(64)))
    val_loss = 2.0 + lr
    print(f"step:1/1 val_loss:{val_loss:.4f} val_bpb:{val_loss / 0.6931471805599453:.4f} train_time:10ms step_avg:10.00ms")
    print(f"final_int8_zlib_roundtrip val_loss:{val_loss:.4f} val_bpb:{val_loss / 0.6931471805599453:.4f} eval_time:5ms")
    print(f"final_int8_zlib_roundtrip_exact val_loss:{val_loss:.8f} val_bpb:{val_loss / 0.6931471805599453:.8f}")
say(f"where rank:{rank} ended:{time.time():.3f}")
