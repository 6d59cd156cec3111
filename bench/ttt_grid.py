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

from pgolf.bpb import ByteLuts, load_tokenizer  # noqa: E402
from pgolf.checkpoint import load_any_checkpoint  # noqa: E402
from pgolf.datasets import default_data_root, resolve_data  # noqa: E402
from pgolf.shards import validation_tokens  # noqa: E402
from pgolf.submission import Runtime, score_tokens  # noqa: E402


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

    model, config = load_any_checkpoint(args.checkpoint, args.seq_len)
    model = model.to(args.device).eval()
    evaluation = dataclasses.replace(config.resolved_eval(), seq_len=args.seq_len)
    data = resolve_data(default_data_root(), config.model.vocab_size, None)
    luts = ByteLuts(load_tokenizer(data.tokenizer, config.model.vocab_size), config.model.vocab_size)
    tokens = validation_tokens(data.val_pattern, args.seq_len, config.model.vocab_size, args.tokens)
    runtime = Runtime(device=torch.device(args.device))
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
