"""Validation bpb of a model: non-overlapping chunks (the official way) or a sliding window.

Chunked: the split is cut into sequences of seq_len; every target is scored once with the context
available inside its chunk. Sliding window: windows of seq_len advance by `stride`; each window scores
only its last `stride` targets (the first window scores all of its targets), so every target is scored
exactly once with at least seq_len - stride tokens of context. Both report eval seconds. With eval.ttt on,
the model also adapts on each chunk after scoring it (pgolf/ttt.py). Each mode is one entry of EVAL_MODES: it
cuts its share of the stream into stretches and records each into the ScoringPass, which holds what the pass
reads and adds up; its Trace keeps per-target losses for the legality probe (search/submit/legality.py).
"""

import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pgolf.bpb import bits_per_byte
from pgolf.config import EvalConfig
from pgolf.model import token_losses
from pgolf.ngram import NgramTilt
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


class ScoringPass:
    """One scoring of a token stream: what it reads (model, tokens, byte tables, eval settings), where it runs (the
    device and this process's share of the stream), and what it adds up (loss nats, targets and bytes in `sums`, and
    each target's loss in the trace when the legality probe asks for one)."""

    def __init__(self, model: nn.Module, tokens: Tensor, luts, settings: EvalConfig, runtime=None, trace: Trace | None = None):
        """runtime: device, rank and world_size (pgolf/submission.py's Runtime); None = one process on the model's
        device."""
        self.model, self.tokens, self.settings, self.trace = model, tokens, settings, trace
        self.device = runtime.device if runtime is not None else next(model.parameters()).device
        self.rank, self.world_size = (runtime.rank, runtime.world_size) if runtime is not None else (0, 1)
        self.luts = luts.to(self.device)
        self.sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss nats, targets, bytes
        self.tilt = (NgramTilt(tokens, settings.ngram_order, settings.ngram_threshold, settings.ngram_boost, self.device)
                     if settings.ngram_order else None)
        self._device_tokens = None

    @property
    def needs_logits(self) -> bool:
        """Whether record() needs each stretch's logits: for the trace, or to tilt them."""
        return self.trace is not None or self.tilt is not None

    def device_tokens(self) -> Tensor:
        """The stream on the scoring device, copied there once (not batch by batch)."""
        if self._device_tokens is None:
            self._device_tokens = self.tokens.to(self.device)
        return self._device_tokens

    def forward(self, x: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
        """The model's loss of x -> y under the eval settings: compiled where it pays (see scoring_forward)."""
        forward = scoring_forward(self.device, self.share(range(self.tokens.numel() - 1)))
        return forward(self.model, x, y, self.settings.repeats, reduction)

    def share(self, items):
        """This process's contiguous share of a sequence (ranks in order cover it once)."""
        return items[len(items) * self.rank // self.world_size : len(items) * (self.rank + 1) // self.world_size]

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.settings.autocast)

    def record(self, first, x: Tensor, y: Tensor, nll: Tensor, scored: Tensor | None = None,
               logits: Tensor | None = None) -> None:
        """Adds one scored stretch: rows x -> y read from the stream at tokens first[r] on (so y[r, c] is target
        first[r] + c), their per-target losses nll [rows, T], the targets that count (scored; None: all of them) and,
        for the trace, the logits [rows * T, vocab]. A stretch scored whole counts as the official eval_val counts
        it, its mean loss times its targets; then nll may be that mean alone when there is no trace."""
        nll = nll.detach()
        if self.tilt is not None:  # the n-gram tilt renormalises each row: the loss is the tilted distribution's
            positions = torch.as_tensor(first, dtype=torch.int64, device=self.device)[:, None] + torch.arange(y.shape[1], device=self.device)
            logits = self.tilt.apply(logits.detach(), positions.reshape(-1))
            nll = torch.nn.functional.cross_entropy(logits, y.reshape(-1), reduction="none").reshape(y.shape)
        if scored is None:
            loss = (nll if nll.dim() == 0 else nll.mean()).to(torch.float64) * float(y.numel())
            prev, target = x.reshape(-1), y.reshape(-1)
        elif self.device.type != "cpu" and self.trace is None:
            # Off the CPU, no boolean indexing (it waits for the device to count the selected rows): masked sums. The
            # counts are exact either way; the loss sum may differ in its last bits by the order of the additions, so
            # the CPU keeps the indexed sum its scores were always taken with.
            self.sums += masked_sums(self.luts, x, y, nll, scored)
            return
        else:
            loss = nll[scored].to(torch.float64).sum()
            prev, target = x[scored], y[scored]
        self.sums[0] += loss
        self.sums[1] += target.numel()
        self.sums[2] += self.luts.target_bytes(prev, target).to(torch.float64).sum()
        if self.trace is not None:
            positions = torch.as_tensor(first, dtype=torch.int64)[:, None] + torch.arange(nll.shape[1])
            if scored is None:
                self.trace.add(positions.reshape(-1), nll.reshape(-1), logits)
            else:
                self.trace.add(positions[scored.cpu()], nll[scored], logits[scored.reshape(-1)])

    def result(self, seconds: float) -> EvalResult:
        loss_sum, tokens, byte_count = (float(v) for v in self.sums.tolist())
        if not math.isfinite(loss_sum):
            raise NonFiniteScore(f"evaluation loss is {loss_sum / tokens} over {int(tokens):,} validation tokens: "
                                 "the model's outputs are not finite")
        return EvalResult(loss=loss_sum / tokens, bpb=bits_per_byte(loss_sum, tokens, byte_count), tokens=int(tokens),
                          bytes=int(byte_count), seconds=seconds)


def masked_sums(luts, x: Tensor, y: Tensor, nll: Tensor, scored: Tensor) -> Tensor:
    """(loss nats, targets, bytes) of the scored targets of a stretch, as masked sums: no count of the selected rows
    is read back to the host, as boolean indexing must."""
    return torch.stack((torch.where(scored, nll, 0).to(torch.float64).sum(), scored.sum().to(torch.float64),
                        (luts.target_bytes(x, y) * scored).to(torch.float64).sum()))


def evaluate_bpb(model: nn.Module, val_tokens: Tensor, luts, settings: EvalConfig, runtime=None,
                 trace: Trace | None = None) -> EvalResult:
    """The bpb of val_tokens under the eval settings (seq_len and repeats resolved), scored in the mode they choose;
    runtime and trace as for ScoringPass."""
    return run_pass(ScoringPass(model, val_tokens, luts, settings, runtime, trace))


def run_pass(scoring: ScoringPass) -> EvalResult:
    """Scores a prepared pass in the mode its settings choose, timed from its first stretch to its last sum."""
    model, mode = scoring.model, eval_mode(scoring.settings)
    was_training = model.training
    model.eval()
    synchronize(scoring.device)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode(mode != "ttt"):  # TTT takes gradients; the plain passes need none
            EVAL_MODES[mode](scoring)
    finally:  # also when a mode stops early (an exception from record()): the model as it was
        model.train(was_training)
    _all_reduce(scoring.sums)
    synchronize(scoring.device)
    return scoring.result(time.perf_counter() - t0)


def _eval_chunks(scoring: ScoringPass) -> None:
    # Mirrors the official eval_val: mean CE per batch of whole sequences, weighted by its token count.
    tokens, seq_len = scoring.tokens, scoring.settings.seq_len
    batch_seqs = max(scoring.settings.batch_tokens // seq_len, 1)
    total_seqs = (tokens.numel() - 1) // seq_len
    mine = scoring.share(range(total_seqs))
    tokens = scoring.device_tokens()
    for s in range(mine.start, mine.stop, batch_seqs):
        e = min(s + batch_seqs, mine.stop)
        local = tokens[s * seq_len : e * seq_len + 1].to(dtype=torch.int64)
        x = local[:-1].reshape(-1, seq_len)
        y = local[1:].reshape(-1, seq_len)
        with scoring.autocast():
            if not scoring.needs_logits:  # the fused mean: all the official count needs
                nll, logits = scoring.forward(x, y), None
            else:  # per token for the probe; the mean of the same values
                nll, logits = token_losses(scoring.model, x, y, scoring.settings.repeats)
        scoring.record([r * seq_len for r in range(s, e)], x, y, nll, logits=logits)


def _eval_windows(scoring: ScoringPass) -> None:
    tokens, seq_len, stride = scoring.tokens, scoring.settings.seq_len, scoring.settings.stride
    num_targets = tokens.numel() - 1
    windows = window_starts(num_targets, seq_len, stride)
    windows = scoring.share(windows)
    batch = max(scoring.settings.batch_tokens // seq_len, 1)
    device_tokens = scoring.device_tokens()
    # Each batch in a few whole-tensor ops (no launch per window): the windows' token indices as one gather, and the
    # targets each scores as one comparison of positions with the windows' first scored offsets.
    starts = torch.tensor([s for s, _ in windows], dtype=torch.int64, device=scoring.device)
    offsets = torch.tensor([o for _, o in windows], dtype=torch.int64, device=scoring.device)
    positions = torch.arange(seq_len + 1, device=scoring.device)
    for b in range(0, len(windows), batch):
        group = windows[b : b + batch]
        rows = device_tokens[starts[b : b + batch, None] + positions].to(torch.int64)
        x, y = rows[:, :-1], rows[:, 1:]
        with scoring.autocast():
            if not scoring.needs_logits:
                nll = scoring.forward(x, y, reduction="none").reshape(len(group), seq_len)
                logits = None
            else:
                nll, logits = token_losses(scoring.model, x, y, scoring.settings.repeats)
        scored = positions[None, :seq_len] >= offsets[b : b + batch, None]
        scoring.record([s for s, _ in group], x, y, nll, scored, logits)


COMPILE_MIN_TOKENS = 4_194_304  # a pass scoring fewer targets per process than this runs eager (the compile would not pay)
_COMPILED_SCORING = {}


def _model_loss(model: nn.Module, x: Tensor, y: Tensor, repeats: int, reduction: str) -> Tensor:
    return model(x, y, repeats=repeats, reduction=reduction)


def scoring_forward(device: torch.device, targets):
    """The scoring passes' model call: compiled on CUDA for a pass long enough to pay for its compile (the official
    script evaluates with its compiled model), eager elsewhere. A function of its own, so its graphs never count
    against the training graphs' recompile limit, and dynamic in the batch size, so a last partial batch adds one
    graph in all rather than one per size."""
    if device.type != "cuda" or len(targets) < COMPILE_MIN_TOKENS:
        return _model_loss
    if "forward" not in _COMPILED_SCORING:
        _COMPILED_SCORING["forward"] = torch.compile(_model_loss, dynamic=None)
    return _COMPILED_SCORING["forward"]


# The eval modes: each scores its process's share of the stream into a ScoringPass. TTT's entry looks its function
# up when called, for pgolf/ttt.py is left out of an exported script whose config does not turn TTT on.
EVAL_MODES = {"chunked": _eval_chunks, "windowed": _eval_windows, "ttt": lambda scoring: eval_ttt(scoring)}


def eval_mode(settings: EvalConfig) -> str:
    """Which of EVAL_MODES the eval settings choose."""
    if settings.ttt != "off":
        return "ttt"
    return "chunked" if settings.stride == 0 or settings.stride >= settings.seq_len else "windowed"
