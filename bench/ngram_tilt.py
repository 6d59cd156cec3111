"""The token n-gram tilt (pgolf/ngram.py) on one checkpoint: bpb and eval seconds of the plain score and of the tilt
over order x threshold x boost, on the whole validation split of the data root (or a prefix), plus the share of
targets each setting tilts and the seconds its tables took. Run nothing else while measuring (wallclock).

    python bench/ngram_tilt.py CHECKPOINT [--tokens 0] [--orders 2 4 8 16] [--thresholds 0.5 0.8] [--boosts 1 2.625]
"""

import argparse
import dataclasses
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from pgolf.ngram import ngram_predictions  # noqa: E402
from checkpoint_scoring import load_scoring  # noqa: E402
from pgolf.submission import score_tokens  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--tokens", type=int, default=0, help="validation prefix (0 = the whole split)")
    parser.add_argument("--seq-len", type=int, default=1024, help="for official checkpoints")
    parser.add_argument("--orders", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--boosts", type=float, nargs="+", default=[1.0, 2.625])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    loaded = load_scoring(args.checkpoint, args.seq_len, args.tokens, args.device, eval_seq_len=False)
    model, _, evaluation, luts, tokens, runtime = (loaded.model, loaded.config, loaded.evaluation, loaded.luts,
                                                        loaded.tokens, loaded.runtime)
    print(f"{args.checkpoint}: {tokens.numel() - 1:,} validation targets, eval seq {evaluation.seq_len}, stride "
          f"{evaluation.stride}, {torch.get_num_threads()} threads")
    print(f"{'evaluation':36} {'tilted':>7} {'tables s':>8} {'bpb':>8} {'eval s':>7} {'Δbpb':>8}")
    start = time.perf_counter()
    base = score_tokens(model, evaluation, tokens, luts, runtime)
    print(f"{'plain':36} {'':>7} {'':>8} {base.bpb:8.4f} {time.perf_counter() - start:7.1f} {0:+8.4f}", flush=True)
    for order in args.orders:
        for threshold in args.thresholds:
            start = time.perf_counter()
            _, confident = ngram_predictions(tokens, order, threshold)
            tables = time.perf_counter() - start
            for boost in args.boosts:
                setting = dataclasses.replace(evaluation, ngram_order=order, ngram_threshold=threshold, ngram_boost=boost)
                start = time.perf_counter()
                bpb = score_tokens(model, setting, tokens, luts, runtime).bpb
                seconds = time.perf_counter() - start
                label = f"tilt order {order} threshold {threshold:g} boost {boost:g}"
                print(f"{label:36} {confident.float().mean().item():7.2%} {tables:8.2f} {bpb:8.4f} {seconds:7.1f} "
                      f"{bpb - base.bpb:+8.4f}", flush=True)


if __name__ == "__main__":
    main()
