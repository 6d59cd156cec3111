"""A trial's post-training allocation run again on its saved checkpoint, as the trial ran it (its space's [allocation]
table and caps), printing each phase's seconds and the evaluation settings chosen. Run it from two checkouts (git
worktree) over the same trial folders, one after the other on an idle machine, for a paired comparison of two versions
of the allocation: same weights, same held-out tokens, so only the code and the timing noise differ.

    python bench/allocation_replay.py SPACE TRIAL_DIR [TRIAL_DIR ...] [--data DIR]

A trial folder holds checkpoint.pgolf (every trained trial keeps one); SPACE is the study's space file.
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch._dynamo  # noqa: E402,F401  (a trial process has it imported before it allocates: search/trial.py)

from pgolf.checkpoint import load_checkpoint  # noqa: E402
from pgolf.datasets import default_data_root, resolve_data  # noqa: E402
from pgolf.submission import setup_runtime  # noqa: E402
from search.allocation import AllocationRequest, allocate  # noqa: E402
from search.cli import USER_ERRORS  # noqa: E402
from space.spec import load_space  # noqa: E402


def replay(space_path: str, trial: str, data_root: str) -> dict:
    space = load_space(space_path)
    runtime = setup_runtime("cpu")
    model, config = load_checkpoint(os.path.join(trial, "checkpoint.pgolf"))
    data = resolve_data(data_root, config.model.vocab_size, None)
    lines = []
    started = time.perf_counter()
    result = allocate(AllocationRequest(model, config, space.allocation, space.caps, data, runtime,
                                        train_seconds=space.caps.train_seconds), log=lines.append)
    best = result.best
    return {"trial": os.path.basename(os.path.normpath(trial)), "seconds": time.perf_counter() - started,
            "phases": result.phases, "eval": best.config.eval if best else None,
            "eval_seconds": best.eval_seconds if best else None, "bpb": best.val_bpb if best else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("space")
    parser.add_argument("trials", nargs="+")
    parser.add_argument("--data", default=default_data_root())
    args = parser.parse_args()
    for trial in args.trials:
        try:
            row = replay(args.space, trial, args.data)
        except USER_ERRORS as exc:  # a missing checkpoint, a bad space file, no data: one line, as `search` says it
            sys.exit(f"allocation_replay: error: {exc}")
        e = row["eval"]
        chosen = "-" if e is None else f"stride {e.stride} ttt {e.ttt}" + (f" c{e.ttt_chunk} r{e.ttt_rank}" if e.ttt != "off" else "") + f" tilt {e.ngram_order}"
        phases = ", ".join(f"{k} {v:.2f}" for k, v in row["phases"].items())
        print(f"{row['trial']}: allocation {row['seconds']:.2f}s ({phases}); chosen {chosen}, eval {row['eval_seconds']:.1f}s, "
              f"bpb {row['bpb']:.4f}", flush=True)


if __name__ == "__main__":
    main()
