"""Test-time training against the other ways to spend evaluation seconds, on one checkpoint: bpb and eval
seconds of the plain chunked score, smaller strides, deeper unrolls (looped checkpoints only) and score-first
TTT over chunk x rank, all on the same validation prefix; each row's gain per extra second is against the
plain score. Run nothing else while measuring (seconds are wallclock).

    python bench/ttt_grid.py CHECKPOINT [--tokens 32768] [--seq-len 256] [--chunks 64 128 256] [--ranks 4 8]
"""

import argparse
import dataclasses
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from checkpoint_scoring import load_scoring  # noqa: E402
from pgolf.submission import score_tokens  # noqa: E402


def options(evaluation, model_cfg, chunks, ranks, strides):
    yield "chunks, no TTT", evaluation
    for stride in strides:
        yield f"stride {stride}", dataclasses.replace(evaluation, stride=stride)
    if model_cfg.loop_repeats > 1:
        for extra in (1, 2):
            yield f"unroll {model_cfg.loop_repeats + extra}", dataclasses.replace(evaluation, repeats=model_cfg.loop_repeats + extra)
    for chunk in chunks:
        for rank in ranks:
            yield f"TTT lora chunk {chunk} rank {rank}", dataclasses.replace(evaluation, ttt="lora", ttt_chunk=chunk, ttt_rank=rank)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--tokens", type=int, default=32768, help="validation prefix scored by every option")
    parser.add_argument("--seq-len", type=int, default=256, help="eval sequence length (the checkpoint's context)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--strides", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    loaded = load_scoring(args.checkpoint, args.seq_len, args.tokens, args.device)
    model, config, evaluation, luts, tokens, runtime = (loaded.model, loaded.config, loaded.evaluation, loaded.luts,
                                                        loaded.tokens, loaded.runtime)
    print(f"{args.checkpoint}: {tokens.numel() - 1:,} validation targets, eval seq {args.seq_len}, "
          f"{torch.get_num_threads()} threads, autocast {evaluation.autocast}")
    print(f"{'evaluation':34} {'bpb':>8} {'eval s':>8} {'Δbpb':>8} {'Δbpb per extra s':>17}")
    base = None
    for label, setting in options(evaluation, config.model, args.chunks, args.ranks, args.strides):
        start = time.perf_counter()
        bpb = score_tokens(model, setting, tokens, luts, runtime).bpb
        seconds = time.perf_counter() - start
        base = base or (bpb, seconds)
        gain = bpb - base[0]
        per = f"{gain / (seconds - base[1]):+.5f}" if seconds > base[1] * 1.05 else "-"
        print(f"{label:34} {bpb:8.4f} {seconds:8.1f} {gain:+8.4f} {per:>17}", flush=True)


if __name__ == "__main__":
    main()
