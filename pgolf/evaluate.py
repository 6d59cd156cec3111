"""Validation bpb of a model: non-overlapping chunks (the official way) or a sliding window.

Chunked: the split is cut into sequences of seq_len; every target is scored once with the context
available inside its chunk. Sliding window: windows of seq_len advance by `stride`; each window scores
only its last `stride` targets (the first window scores all of its targets), so every target is scored
exactly once with at least seq_len - stride tokens of context. Both report eval seconds. With eval.ttt on,
the model also adapts on each chunk after scoring it (pgolf/ttt.py). A Trace records per-target losses for
the legality probe (search/submit/legality.py).
"""

import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pgolf.bpb import bits_per_byte
from pgolf.model import token_losses
from pgolf.ttt import eval_ttt


class NonFiniteScore(ArithmeticError):
    """An evaluation loss that is NaN or infinite: it fails the run, it is never ranked."""


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy, nats per token
    bpb: float
    tokens: int
    bytes: int
    seconds: float


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _all_reduce(values: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def window_starts(num_targets: int, seq_len: int, stride: int) -> list[tuple[int, int]]:
    """(window start, first scored offset inside the window) covering targets 0..num_targets-1 once."""
    if num_targets <= seq_len:
        return [(0, 0)]
    windows = [(0, 0)]
    scored_to = seq_len
    while scored_to < num_targets:
        end = min(scored_to + stride, num_targets)
        start = end - seq_len
        windows.append((start, scored_to - start))
        scored_to = end
    return windows


class Trace:
    """What the legality probe reads from one evaluation: each target's loss, how often each target was scored,
    and at the chosen targets the loss every token of the vocabulary would have had there (the whole
    distribution the score was taken from)."""

    def __init__(self, num_targets: int, positions=()):
        self.nll = torch.full((num_targets,), math.nan, dtype=torch.float64)
        self.count = torch.zeros(num_targets, dtype=torch.int32)
        self.positions = torch.as_tensor(list(positions), dtype=torch.int64)
        self.dist: dict[int, Tensor] = {}

    def add(self, targets: Tensor, nll: Tensor, logits: Tensor) -> None:
        """targets: indices of the scored targets; nll and logits: their rows, in the same order."""
        targets = targets.cpu()
        self.nll[targets] = nll.detach().to("cpu", torch.float64)
        self.count.index_add_(0, targets, torch.ones_like(targets, dtype=torch.int32))
        for i in torch.isin(targets, self.positions).nonzero().flatten().tolist():
            # cross_entropy(z, v) for every v, as the score computes it for the real target
            self.dist[int(targets[i])] = (-torch.log_softmax(logits[i].detach().float(), -1)).to("cpu", torch.float64)


def evaluate_bpb(
    model: nn.Module,
    val_tokens: Tensor,
    luts,
    seq_len: int,
    stride: int = 0,
    batch_tokens: int = 524_288,
    repeats: int | None = None,
    autocast: bool = True,
    device: torch.device | None = None,
    rank: int = 0,
    world_size: int = 1,
    ttt=None,
    trace: Trace | None = None,
) -> EvalResult:
    """ttt: the eval settings when they turn test-time training on (pgolf/ttt.py), else None."""
    device = device or next(model.parameters()).device
    luts = luts.to(device)
    was_training = model.training
    model.eval()
    synchronize(device)
    t0 = time.perf_counter()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss nats, tokens, bytes
    with torch.inference_mode(ttt is None):  # TTT takes gradients; the plain passes need none
        if ttt is not None:
            eval_ttt(model, val_tokens, luts, ttt, seq_len, repeats, autocast, device, rank, world_size, sums, trace)
        elif stride == 0 or stride >= seq_len:
            _eval_chunks(model, val_tokens, luts, seq_len, batch_tokens, repeats, autocast, device, rank, world_size, sums, trace)
        else:
            _eval_windows(model, val_tokens, luts, seq_len, stride, batch_tokens, repeats, autocast, device, rank, world_size, sums, trace)
    _all_reduce(sums)
    synchronize(device)
    seconds = time.perf_counter() - t0
    model.train(was_training)
    loss_sum, tokens, byte_count = (float(v) for v in sums.tolist())
    if not math.isfinite(loss_sum):
        raise NonFiniteScore(f"evaluation loss is {loss_sum / tokens} over {int(tokens):,} validation tokens: "
                             "the model's outputs are not finite")
    return EvalResult(loss=loss_sum / tokens, bpb=bits_per_byte(loss_sum, tokens, byte_count), tokens=int(tokens),
                      bytes=int(byte_count), seconds=seconds)


def _eval_chunks(model, val_tokens, luts, seq_len, batch_tokens, repeats, autocast, device, rank, world_size, sums, trace=None):
    # Mirrors the official eval_val: mean CE per batch of whole sequences, weighted by its token count.
    batch_seqs = max(batch_tokens // seq_len, 1)
    total_seqs = (val_tokens.numel() - 1) // seq_len
    first, last = total_seqs * rank // world_size, total_seqs * (rank + 1) // world_size
    for s in range(first, last, batch_seqs):
        e = min(s + batch_seqs, last)
        local = val_tokens[s * seq_len : e * seq_len + 1].to(device=device, dtype=torch.int64)
        x = local[:-1].reshape(-1, seq_len)
        y = local[1:].reshape(-1, seq_len)
        with _autocast(device, autocast):
            if trace is None:
                loss = model(x, y, repeats=repeats).detach()
            else:  # per token for the probe; the mean of the same values
                nll, logits = token_losses(model, x, y, repeats)
                trace.add(torch.arange(s * seq_len, e * seq_len), nll.reshape(-1), logits)
                loss = nll.mean()
        count = float(y.numel())
        sums[0] += loss.to(torch.float64) * count
        sums[1] += count
        sums[2] += luts.target_bytes(x.reshape(-1), y.reshape(-1)).to(torch.float64).sum()


def _eval_windows(model, val_tokens, luts, seq_len, stride, batch_tokens, repeats, autocast, device, rank, world_size, sums, trace=None):
    num_targets = val_tokens.numel() - 1
    windows = window_starts(num_targets, seq_len, stride)
    windows = windows[len(windows) * rank // world_size : len(windows) * (rank + 1) // world_size]
    batch = max(batch_tokens // seq_len, 1)
    for b in range(0, len(windows), batch):
        group = windows[b : b + batch]
        x = torch.stack([val_tokens[s : s + seq_len] for s, _ in group]).to(device=device, dtype=torch.int64)
        y = torch.stack([val_tokens[s + 1 : s + seq_len + 1] for s, _ in group]).to(device=device, dtype=torch.int64)
        with _autocast(device, autocast):
            if trace is None:
                nll = model(x, y, repeats=repeats, reduction="none").reshape(len(group), seq_len)
            else:
                nll, logits = token_losses(model, x, y, repeats)
        scored = torch.zeros_like(nll, dtype=torch.bool)
        for row, (_, offset) in enumerate(group):
            scored[row, offset:] = True
        if trace is not None:
            trace.add(torch.cat([torch.arange(s + offset, s + seq_len) for s, offset in group]), nll[scored],
                      logits[scored.reshape(-1)])
        sums[0] += nll[scored].to(torch.float64).sum()
        sums[1] += scored.sum().to(torch.float64)
        sums[2] += luts.target_bytes(x[scored], y[scored]).to(torch.float64).sum()
