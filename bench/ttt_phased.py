"""Phased global TTT (the best record's: the documents of a prefix of the stream scored first, then
eval.ttt_global_targets adapted on them, then every later document scored with adapters of its own) against
per-document score-first TTT alone and the plain score, on one checkpoint and one validation prefix: bpb and
eval seconds per setting. The global prefix defaults to a quarter of the scored prefix. Use a trained
checkpoint: an untrained model's zero-initialised output projections give c_q/c_v no gradient. Run nothing
else while measuring (seconds are wallclock).

    python bench/ttt_phased.py CHECKPOINT [--tokens 16384] [--seq-len 256] [--chunk 128] [--rank 8] [--global-steps 1 2]
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


def options(evaluation, chunk: int, rank: int, global_tokens: int, global_steps: list[int]):
    yield "plain (chunks, no TTT)", evaluation
    per_document = dataclasses.replace(evaluation, ttt="lora", ttt_chunk=chunk, ttt_rank=rank, ttt_reset="document")
    yield f"per-document TTT c{chunk} r{rank}", per_document
    for steps in global_steps:
        yield (f"phased: global {global_tokens} x{steps} + per-doc",
               dataclasses.replace(per_document, ttt_global_tokens=global_tokens, ttt_global_steps=steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--tokens", type=int, default=16384, help="validation prefix scored by every setting")
    parser.add_argument("--seq-len", type=int, default=256, help="eval sequence length (the checkpoint's context)")
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--global-tokens", type=int, default=0, help="the global phase's prefix (0 = a quarter of --tokens)")
    parser.add_argument("--global-steps", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    loaded = load_scoring(args.checkpoint, args.seq_len, args.tokens, args.device)
    model, _, evaluation, luts, tokens, runtime = (loaded.model, loaded.config, loaded.evaluation, loaded.luts,
                                                        loaded.tokens, loaded.runtime)
    global_tokens = args.global_tokens or (tokens.numel() - 1) // 4
    print(f"{args.checkpoint}: {tokens.numel() - 1:,} validation targets, eval seq {args.seq_len}, "
          f"{torch.get_num_threads()} threads, global targets {evaluation.ttt_global_targets}")
    print(f"{'evaluation':40} {'bpb':>8} {'eval s':>8} {'Δbpb':>8}")
    base = None
    for label, setting in options(evaluation, min(args.chunk, args.seq_len), args.rank, global_tokens, args.global_steps):
        start = time.perf_counter()
        bpb = score_tokens(model, setting, tokens, luts, runtime).bpb
        seconds = time.perf_counter() - start
        base = bpb if base is None else base
        print(f"{label:40} {bpb:8.4f} {seconds:8.1f} {bpb - base:+8.4f}", flush=True)


if __name__ == "__main__":
    main()
