"""Score-first test-time training (TTT): the model adapts on validation text it has already scored.

The targets are cut into chunks of eval.ttt_chunk. Each chunk is scored with the current weights, and only
then does the model take eval.ttt_steps gradient steps on that chunk, so no target is scored by weights that
have seen it. Inside a chunk, targets are scored by windows of eval.seq_len tokens, one per eval.stride
targets (one per chunk when the stride is 0 or not below the chunk), so the stride keeps its meaning.

What adapts (eval.ttt): `lora` gives the matrices named by eval.ttt_targets (module globs; "head" is the output
layer) rank-r adapters B A, A random and B zero, so adaptation starts from the stored model; `full` adapts the
tensors named by the globs themselves. eval.ttt_reset = "document" starts fresh at every BOS: documents are
independent, each window reads only its own document, and a batch of documents adapts side by side, each
with LoRA adapters of its own (full tensors: one document at a time). "never" carries adaptation along one
stream per rank; eval.ttt_phase_tokens > 0 stops adapting after that many targets and scores the rest with
the adapted weights, batched. Phased global TTT (eval.ttt_global_tokens > 0, the best record's): the documents
that start within the first ttt_global_tokens targets are scored first, per document; then the tensors named by
eval.ttt_global_targets adapt on those targets, and every later document is scored, with adapters of its own,
on top of the adapted weights.
"""

import fnmatch
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pgolf.config import ConfigError
from pgolf.model import token_losses

HEAD_TARGET = "head"


@dataclass
class Segment:
    start: int  # first target
    end: int  # one past the last target
    floor: int  # earliest token a window may read


def ttt_segments(scoring) -> list[Segment]:
    """Per document (target t, which reads token t, belongs to the document holding token t), or one stream per rank."""
    num_targets = scoring.tokens.numel() - 1
    if scoring.settings.ttt_reset == "never":
        stream = scoring.share(range(num_targets))
        return [Segment(stream.start, stream.stop, 0)]
    return scoring.share(documents(scoring))


def documents(scoring) -> list[Segment]:
    """Every document of the whole stream (all ranks' shares)."""
    num_targets = scoring.tokens.numel() - 1
    starts = (scoring.tokens[:num_targets] == scoring.model.cfg.bos_id).nonzero().flatten().tolist()
    bounds = sorted(set([0] + starts)) + [num_targets]
    return [Segment(a, b, a) for a, b in zip(bounds, bounds[1:]) if b > a]


class LoraAdapters:
    """Rank-r deltas x -> (x A^T) B^T on the chosen matrices, one pair per row of the batch (one per document)."""

    def __init__(self, model: nn.Module, patterns: list, rank: int, seeds: list[int], device: torch.device):
        from_linear = [(name, m) for name, m in model.named_modules()
                       if isinstance(m, nn.Linear) and any(fnmatch.fnmatchcase(name, p) for p in patterns)]
        shapes = [(m.in_features, m.out_features) for _, m in from_linear]
        head = HEAD_TARGET in patterns
        if head:
            width = model.tok_emb.weight.shape[1] if model.lm_head is None else model.lm_head.in_features
            shapes.append((width, model.cfg.vocab_size))
        if not shapes:
            raise ConfigError(f"eval.ttt_targets {patterns} match no matrix of this model")
        # Each row's A comes from a generator of its own, seeded by its document's first target: a row's start
        # must not depend on how many documents share its batch, for that is decided by later BOS tokens.
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.a, self.b = [], []
        for fan_in, fan_out in shapes:  # A as nn.Linear's default init, B zero
            bound = 1.0 / math.sqrt(fan_in)
            a = torch.stack([torch.rand(rank, fan_in, generator=g) * 2 - 1 for g in generators]).mul_(bound)
            self.a.append(a.to(device).requires_grad_())
            self.b.append(torch.zeros(len(seeds), fan_out, rank, device=device, requires_grad=True))
        self.rows = torch.arange(len(seeds), device=device)
        self.hooks = [m.register_forward_hook(self._hook(i)) for i, (_, m) in enumerate(from_linear)]
        self.model = model
        if head:
            model.head_adapter = self._head(len(shapes) - 1)

    def parameters(self) -> list[Tensor]:
        return self.a + self.b

    def select(self, rows: Tensor) -> None:
        """The adapter rows the next forward pass uses, one per batch row."""
        self.rows = rows

    def _delta(self, i: int, x: Tensor) -> Tensor:
        """x: [rows, T, in] or, as the output layer sees it, [rows * T, in]."""
        a, b = self.a[i][self.rows].to(x.dtype), self.b[i][self.rows].to(x.dtype)
        h = x.reshape(len(self.rows), -1, x.size(-1))
        return torch.bmm(torch.bmm(h, a.transpose(1, 2)), b.transpose(1, 2)).reshape(*x.shape[:-1], -1)

    def _hook(self, i: int):
        return lambda module, args, out: out + self._delta(i, args[0])

    def _head(self, i: int):
        return lambda x: self._delta(i, x)

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.model.head_adapter = None


class TensorAdapters:
    """The chosen tensors themselves adapt (one row: one document or stream at a time); close() restores them."""

    def __init__(self, model: nn.Module, patterns: list):
        self.tensors = [p for name, p in model.named_parameters() if any(fnmatch.fnmatchcase(name, q) for q in patterns)]
        if not self.tensors:
            raise ConfigError(f"eval.ttt_targets {patterns} match no tensor of this model")
        self.saved = [(p.detach().clone(), p.requires_grad) for p in self.tensors]
        for p in self.tensors:
            p.requires_grad_(True)

    def parameters(self) -> list[Tensor]:
        return self.tensors

    def select(self, rows: Tensor) -> None:
        pass

    def close(self) -> None:
        with torch.no_grad():
            for p, (saved, grad) in zip(self.tensors, self.saved):
                p.copy_(saved)
                p.requires_grad_(grad)


def _optimizer(cfg, params: list[Tensor]) -> torch.optim.Optimizer:
    if cfg.ttt_optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.ttt_lr)
    return torch.optim.Adam(params, lr=cfg.ttt_lr, betas=(0.9, 0.95))


def _forward(scoring, windows: list[tuple[int, int, int]]) -> tuple:
    """The losses of windows (u, v, floor): tokens [max(floor, v - seq_len), v) read, targets u..v-1 marked. Returns
    ScoringPass.record's arguments (first token of each row, inputs, targets, nll [rows, T], scored mask, logits);
    rows are right-padded with token 0 (causal: harmless). The rows are gathered from the stream on the scoring
    device in a few whole-batch ops, not copied row by row."""
    seq_len, device = scoring.settings.seq_len, scoring.device
    starts = [max(floor, v - seq_len) for _, v, floor in windows]
    width = max(v - s for (_, v, _), s in zip(windows, starts))
    bounds = torch.tensor([[s, u, v] for (u, v, _), s in zip(windows, starts)], dtype=torch.int64).to(device)
    tokens = scoring.device_tokens()
    at = bounds[:, :1] + torch.arange(width, device=device)  # the stream position each input reads
    inside = at < bounds[:, 2:]
    x = torch.where(inside, tokens[at.clamp(max=tokens.numel() - 1)].to(torch.int64), 0)
    y = torch.where(inside, tokens[(at + 1).clamp(max=tokens.numel() - 1)].to(torch.int64), 0)
    mask = inside & (at >= bounds[:, 1:2])
    with scoring.autocast():
        nll, logits = token_losses(scoring.model, x, y, scoring.settings.repeats)
    return starts, x, y, nll, mask, logits


def _score(scoring, windows, rows: Tensor | None, adapters) -> None:
    """Windows scored with the weights as they are (each row with adapter row `rows[i]`), recorded, no update."""
    with torch.no_grad():
        if adapters is not None and rows is not None:
            adapters.select(rows)
        scoring.record(*_forward(scoring, windows))


def _window(u: int, length: int, end: int, floor: int, seq_len: int) -> tuple[int, int, int]:
    """Targets u..min(u + length, end) - 1, read from where a window of the full length would start. Reading
    from the clipped end instead would give a document's last targets more context the sooner the document
    ends, and where it ends is decided by a later BOS token: the future."""
    return u, min(u + length, end), max(floor, u + length - seq_len)


def _step_windows(chunk: tuple[int, int, int], step: int, seq_len: int) -> list[tuple[int, int, int]]:
    a, b, floor = chunk
    return [_window(u, step, b, floor, seq_len) for u in range(a, b, step)]


def stride_inside_chunks(cfg) -> bool:
    """Whether eval.stride cuts each TTT chunk into windows: only a stride below the chunk does; one of a chunk or
    more scores each chunk in one window, as stride 0 does, and so changes nothing under TTT."""
    return 0 < cfg.stride < cfg.ttt_chunk


def eval_ttt(scoring) -> None:
    """Score-first TTT over this process's share of the stream, recorded into scoring (pgolf/evaluate.py's
    ScoringPass; its eval settings turn TTT on) like the plain passes."""
    cfg = scoring.settings
    segments = ttt_segments(scoring)
    step = cfg.stride if stride_inside_chunks(cfg) else cfg.ttt_chunk
    # Documents side by side with LoRA (each row its own adapters); full tensors are shared: one at a time.
    rows_per_batch = max(cfg.batch_tokens // cfg.seq_len, 1) if cfg.ttt == "lora" else 1
    frozen = [p for p in scoring.model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        if cfg.ttt_global_tokens:  # phased: the prefix's documents scored, the weights adapted on them, then the rest
            # A document belongs to the prefix by where it starts: where it ends is decided by a later BOS, the future.
            prefix = [s for s in segments if s.start < cfg.ttt_global_tokens]
            _adapt_all(scoring, prefix, step, rows_per_batch)
            adapted = _global_phase(scoring, rows_per_batch)
            try:
                _adapt_all(scoring, [s for s in segments if s.start >= cfg.ttt_global_tokens], step, rows_per_batch)
            finally:
                adapted.close()
        else:
            _adapt_all(scoring, segments, step, rows_per_batch)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _adapt_all(scoring, segments: list, step: int, rows_per_batch: int) -> None:
    for first in range(0, len(segments), rows_per_batch):
        _adapt_batch(scoring, segments[first : first + rows_per_batch], step, rows_per_batch)


def _global_phase(scoring, rows_per_batch: int) -> "TensorAdapters":
    """The global phase: eval.ttt_global_targets adapt on the first eval.ttt_global_tokens targets of the stream, per
    document (each read from its own start), chunk by chunk, eval.ttt_global_steps passes; every rank adapts alike.
    Those targets belong to documents that start before the mark and were scored first (by this rank just before,
    or by another rank); the documents scored on the adapted weights start at the mark or later. Returns the
    adapters, whose close() restores the weights."""
    cfg, seq_len = scoring.settings, scoring.settings.seq_len
    adapted = TensorAdapters(scoring.model, cfg.ttt_global_targets)
    optimizer = _optimizer(cfg, adapted.parameters())
    mark = cfg.ttt_global_tokens
    chunks = [w for s in documents(scoring) if s.start < mark for w in _step_windows((s.start, min(s.end, mark), s.floor), cfg.ttt_chunk, seq_len)]
    for _ in range(cfg.ttt_global_steps):
        for b in range(0, len(chunks), rows_per_batch):
            _, _, _, nll, mask, _ = _forward(scoring, chunks[b : b + rows_per_batch])
            optimizer.zero_grad(set_to_none=True)
            ((nll * mask).sum(1) / mask.sum(1)).sum().backward()
            optimizer.step()
    for p in adapted.parameters():  # the per-document phase trains its own adapters only
        p.requires_grad_(False)
    return adapted


def _adapt_batch(scoring, segments: list[Segment], step: int, batch_rows: int) -> None:
    cfg, seq_len, chunk, device = scoring.settings, scoring.settings.seq_len, scoring.settings.ttt_chunk, scoring.device
    if cfg.ttt == "lora":
        adapters = LoraAdapters(scoring.model, cfg.ttt_targets, cfg.ttt_rank, [s.start for s in segments], device)
    else:
        adapters = TensorAdapters(scoring.model, cfg.ttt_targets)
    optimizer = _optimizer(cfg, adapters.parameters())
    try:
        for c in range(max(math.ceil((s.end - s.start) / chunk) for s in segments)):
            live = [(i, s) for i, s in enumerate(segments) if s.start + c * chunk < s.end]
            spans = [(s.start + c * chunk, min(s.start + (c + 1) * chunk, s.end), s.floor) for _, s in live]
            chunks = [_window(a, chunk, b, floor, seq_len) for a, b, floor in spans]
            rows = torch.tensor([i for i, _ in live], device=device)
            if cfg.ttt_phase_tokens and c * chunk >= cfg.ttt_phase_tokens:
                # Phase two: adaptation is over; the rest of the stream is scored with the adapted weights, batched.
                rest = [w for s in segments for w in _step_windows((s.start + c * chunk, s.end, s.floor), step, seq_len)]
                for b in range(0, len(rest), batch_rows):
                    _score(scoring, rest[b : b + batch_rows], rows[:1].expand(len(rest[b : b + batch_rows])), adapters)
                return
            # One window per chunk: the first step's forward pass is also the chunk's score (taken before its update).
            single = step >= chunk and cfg.ttt_steps > 0
            if not single:
                _score_chunks(scoring, adapters, live, spans, step)
            _train_chunks(scoring, adapters, optimizer, rows, chunks, score_first_step=single)
    finally:
        adapters.close()


def _score_chunks(scoring, adapters, live: list, spans: list, step: int) -> None:
    """Every window of each row's chunk (spans: first target, end, floor), scored with the weights as they are."""
    per_row = [_step_windows(span, step, scoring.settings.seq_len) for span in spans]
    for k in range(max(len(w) for w in per_row)):
        windows = [w[k] for w in per_row if len(w) > k]
        owners = torch.tensor([i for (i, _), w in zip(live, per_row) if len(w) > k], device=scoring.device)
        if windows:
            _score(scoring, windows, owners, adapters)


def _train_chunks(scoring, adapters, optimizer, rows: Tensor, chunks: list, score_first_step: bool) -> None:
    for k in range(scoring.settings.ttt_steps):
        adapters.select(rows)
        first, x, y, nll, mask, logits = _forward(scoring, chunks)
        if score_first_step and k == 0:
            scoring.record(first, x, y, nll, mask, logits)
        per_row = (nll * mask).sum(1) / mask.sum(1)
        optimizer.zero_grad(set_to_none=True)
        per_row.sum().backward()  # a sum: each row's adapters get exactly its own chunk's gradient
        optimizer.step()
