"""The held-out loss of every stride and n-gram tilt from one scoring pass (the joint choice's stride and tilt pieces).

A sliding-window pass at stride s runs the windows pgolf/evaluate.py's window_starts lays out (starting at 0, s, 2s,
..., and the last one ending at the stream's end) and counts each target in one of them. The model's loss at every
position of every window is computed anyway; kept, it gives the exact loss of every setting whose windows are among
these: a stride that is a multiple of s, and the plain chunks where the sequence length is one. The tilt only raises
the logit of the token it predicts, so with that token's log-probability kept too, each setting's tilted loss follows:

    nll' = nll - boost * [target == predicted] + log(1 + p(predicted) * (e^boost - 1))   where the tilt is confident.

So one pass measures the held-out gain of every setting it covers, where one pass per setting did (the demo ran chunks,
stride 128, stride 64 and the tilt: 8.1 chunk passes' time; now stride 128's pass, 2, and stride 64's, 4, only where
the windows timed predict that it fits: joint.py's _sweeps). A derived setting's time is the
pass's seconds per window times its own windows: a window costs the same at every stride and in chunks (the demo timed
strides 128 and 64 at 2.05x and 3.94x the chunks, for 2x and 4x their windows). The seconds spent keeping the losses
are left out of the pass's time, so it times the setting it runs.
"""

import math
import time
from dataclasses import dataclass

import torch

from pgolf.evaluate import synchronize, window_starts
from pgolf.ngram import ngram_predictions
from search.allocation.timing import LimitedPass, run_limited


def setting_windows(num_targets: int, seq_len: int, stride: int) -> list[tuple[int, int]]:
    """(window start, first scored offset) of a setting's pass: stride 0 is the chunked pass (whole sequences only,
    as pgolf/evaluate.py's _eval_chunks scores them)."""
    if stride == 0 or stride >= seq_len:
        return [(k * seq_len, 0) for k in range(num_targets // seq_len)]
    return window_starts(num_targets, seq_len, stride)


class SweepPass(LimitedPass):
    """A time-limited scoring pass that also keeps, per window, each position's loss and, per tilt order, the
    log-probability of the token the tilt predicts there."""

    def __init__(self, model, tokens, luts, settings, runtime, tilts: dict):
        """tilts: order -> (predicted token, confident) per target of tokens (pgolf/ngram.py's ngram_predictions)."""
        super().__init__(model, tokens, luts, settings, runtime)
        self.tilts = {n: (p.to(self.device), c) for n, (p, c) in tilts.items()}
        self.starts, self.nll, self.predicted_logp = [], [], {n: [] for n in tilts}

    @property
    def needs_logits(self) -> bool:
        return True  # per position even for chunks (their plain pass takes the fused mean)

    def record(self, first, x, y, nll, scored=None, logits=None) -> None:
        super().record(first, x, y, nll, scored, logits)  # the pass's own sums, and its time limit
        synchronize(self.device)
        began = time.perf_counter()  # what is kept is not the setting's work: its time is left out of the pass's
        self.keep(first, y, nll, logits)
        synchronize(self.device)
        self.excluded += time.perf_counter() - began

    def keep(self, first, y, nll, logits) -> None:
        self.starts += [int(f) for f in first]
        self.nll.append(nll.detach().float().cpu())
        if self.tilts:
            logits = logits.detach().float()
            norm = torch.logsumexp(logits, -1)
            targets = (torch.as_tensor(first, device=self.device)[:, None] + torch.arange(y.shape[1], device=self.device)).reshape(-1)
            for order, (predicted, _) in self.tilts.items():
                index = predicted[targets.clamp(max=predicted.numel() - 1)]
                self.predicted_logp[order].append((logits.gather(1, index[:, None])[:, 0] - norm).reshape(y.shape).cpu())


@dataclass
class Sweep:
    """One pass's per-window losses over `tokens`: the loss and time of each setting whose windows it ran."""

    stride: int  # the pass's own stride (0: chunks)
    seq_len: int
    tokens: torch.Tensor
    seconds: float
    starts: dict  # window start -> its row
    nll: torch.Tensor  # [windows, seq_len]
    predicted_logp: dict  # tilt order -> [windows, seq_len]
    tilts: dict  # tilt order -> (predicted, confident) per target
    boost: float

    def covers(self, stride: int) -> bool:
        return all(start in self.starts for start, _ in setting_windows(self.tokens.numel() - 1, self.seq_len, stride))

    def loss(self, stride: int, tilt_order: int = 0) -> float:
        """Mean nats per target counted of the setting (stride, tilt order; 0 for none), exactly as its own pass
        counts them up to the order of the additions; the setting's windows must be covered."""
        windows = setting_windows(self.tokens.numel() - 1, self.seq_len, stride)
        rows = torch.tensor([self.starts[s] for s, _ in windows])
        nll = self.nll[rows].double()
        if tilt_order:
            targets = torch.tensor([s for s, _ in windows])[:, None] + torch.arange(self.seq_len)
            predicted, confident = (t[targets] for t in self.tilts[tilt_order])
            hit = predicted == self.tokens[targets + 1]
            raised = torch.log1p(self.predicted_logp[tilt_order][rows].double().exp() * math.expm1(self.boost))
            nll = nll + confident * (raised - self.boost * hit)
        counted = torch.arange(self.seq_len)[None, :] >= torch.tensor([o for _, o in windows])[:, None]
        return float(nll[counted].sum() / counted.sum())

    def seconds_of(self, stride: int) -> float:
        """The time of a covered setting's own pass over these tokens: this pass's seconds per window times its windows."""
        return self.seconds * len(setting_windows(self.tokens.numel() - 1, self.seq_len, stride)) / len(self.starts)


def sweep(model, evaluation, tokens, luts, runtime, limit: float, tilt_orders=()) -> Sweep | None:
    """The pass of `evaluation` (its stride; tilt off) over tokens with every window's losses kept, or None when it runs
    past `limit` seconds (timing.py); tilt_orders: the n-gram orders whose tilt each setting is also derived with."""
    tilts = {n: ngram_predictions(tokens, n, evaluation.ngram_threshold) for n in tilt_orders}
    scoring = SweepPass(model, tokens, luts, evaluation, runtime, tilts)
    result = run_limited(scoring, limit)
    if result is None:
        return None
    return Sweep(evaluation.stride if evaluation.stride < evaluation.seq_len else 0, evaluation.seq_len, tokens.cpu(),
                 result.seconds - scoring.excluded, {s: i for i, s in enumerate(scoring.starts)}, torch.cat(scoring.nll),
                 {n: torch.cat(v) for n, v in scoring.predicted_logp.items()}, tilts, evaluation.ngram_boost)
