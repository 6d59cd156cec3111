"""Token n-gram tilt: an evaluation-time boost from text already scored (the best audited record's eval piece).

For each target t (the token at stream position t + 1), the context is the `order` tokens ending at position t.
If that context occurred before, the tilt predicts the token that followed its latest earlier occurrence, with
confidence = (earlier occurrences followed by that token) / (earlier occurrences + 1), the +1 a pseudo-count for
"something else" so that one sighting is never certain. Where the confidence exceeds `threshold`, the predicted
token's logit is raised by `boost` and the distribution renormalised. Everything is read from positions <= t, the
tokens already scored (causal), and the result is a softmax (normalised): legal by construction, and checked by
the legality probe like any eval mode. The tables are built once per stream, vectorised (sorts, no Python loop
per token), so the official split's 62 M tokens take seconds.
"""

import numpy as np
import torch
from torch import Tensor

HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant: contexts hash apart with ~2^-64 collisions


def ngram_predictions(tokens, order: int, threshold: float) -> tuple[Tensor, Tensor]:
    """(predicted token [N - 1] int64, confident [N - 1] bool) for the N - 1 targets of a token stream."""
    stream = np.asarray(tokens.cpu() if isinstance(tokens, Tensor) else tokens).astype(np.uint64)
    targets = stream.size - 1
    pred = np.zeros(max(targets, 0), dtype=np.int64)
    confident = np.zeros(max(targets, 0), dtype=bool)
    if order < 1 or targets < order:
        return torch.from_numpy(pred), torch.from_numpy(confident)
    # Context hash of the `order` tokens ending at t, for t = order-1 .. targets-1 (so the next token exists).
    t = np.arange(order - 1, targets)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps on purpose
        h = np.zeros(t.size, dtype=np.uint64)
        for i in range(order):
            h = h * HASH_MULTIPLIER + stream[t - order + 1 + i] + np.uint64(1)
    following = stream[t + 1].astype(np.int64)
    # Occurrences of each context in stream order: rank = earlier occurrences, latest = the previous one.
    by_context = np.lexsort((t, h))
    same = np.zeros(t.size, dtype=bool)
    same[1:] = h[by_context[1:]] == h[by_context[:-1]]
    group_start = np.maximum.accumulate(np.where(same, 0, np.arange(t.size)))
    earlier = np.empty(t.size, dtype=np.int64)
    earlier[by_context] = np.arange(t.size) - group_start
    latest = np.full(t.size, -1, dtype=np.int64)
    latest[by_context[1:][same[1:]]] = by_context[:-1][same[1:]]
    # How often (context, following token) occurred up to and including each occurrence.
    by_pair = np.lexsort((t, following, h))
    same_pair = np.zeros(t.size, dtype=bool)
    same_pair[1:] = (h[by_pair[1:]] == h[by_pair[:-1]]) & (following[by_pair[1:]] == following[by_pair[:-1]])
    pair_start = np.maximum.accumulate(np.where(same_pair, 0, np.arange(t.size)))
    pair_count = np.empty(t.size, dtype=np.int64)
    pair_count[by_pair] = np.arange(t.size) - pair_start + 1
    seen = latest >= 0
    safe = np.where(seen, latest, 0)
    confidence = np.where(seen, pair_count[safe] / (earlier + 1.0), 0.0)
    pred[t] = np.where(seen, following[safe], 0)
    confident[t] = confidence > threshold
    return torch.from_numpy(pred), torch.from_numpy(confident)


class NgramTilt:
    """The tilt of one evaluation stream: its predictions, moved to the scoring device once."""

    def __init__(self, tokens, order: int, threshold: float, boost: float, device: torch.device):
        pred, confident = ngram_predictions(tokens, order, threshold)
        self.pred, self.confident, self.boost = pred.to(device), confident.to(device), boost

    def apply(self, logits: Tensor, targets: Tensor) -> Tensor:
        """logits [M, vocab] (float32 copy) with the boost added where targets [M] (stream target indices; any past
        the stream's end are padding and get none) have a confident prediction; no host sync."""
        inside = targets < self.pred.numel()
        index = targets.clamp(max=self.pred.numel() - 1)
        gain = (self.confident[index] & inside).to(torch.float32) * self.boost
        return logits.float().scatter_add(1, self.pred[index][:, None], gain[:, None])
