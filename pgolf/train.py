"""The training loop: baseline recipe with a wallclock cap, a step cap and periodic validation reports.

Learning-rate schedule: optional linear warmup, then constant, then a linear warmdown over the last
`warmdown_iters` steps. Where the run ends first (the step cap, or the wallclock cap at the measured
step time) decides when the warmdown starts, so a time-capped run still anneals to zero.
Time spent in periodic validation is not training time (as in the official script).
QAT (pgolf/qat.py): over the last qat_fraction of training, timed the same way, the forward pass sees the
block matrices fake-quantized, and the loss may carry a rate term on their estimated coded size.
The context schedule (seq_len_stages) is timed the same way; an EMA of the weights (ema_decay) replaces
them at the end, so the EMA is what is calibrated, quantized and stored.
"""

import contextlib
import copy
import ctypes
import inspect
import math
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from pgolf.config import ConfigError
from pgolf.evaluate import synchronize
from pgolf.fused import fused_ops
from pgolf.model import reserve_positions
from pgolf.optim import build_optimizers
from pgolf.qat import QATForward, qat_due

STEP_HISTORY = 8  # steps whose slowest one budgets the next step against the wallclock cap
GPU_PASS_TOKENS = 65_536  # the official script's forward/backward pass per GPU: 524,288 tokens per step over 8 GPUs
COMPILE_BACKEND = "inductor"  # torch.compile's backend (a test counts graphs with a cheaper one)
LOSS_CHECK_EVERY = 50  # on a GPU, steps between reads of the loss (a host sync) where no log line needs it


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainResult:
    steps: int
    train_tokens: int
    train_seconds: float
    stopped_by: str  # "iterations" | "wallclock"
    final_train_loss: float
    val_history: list = field(default_factory=list)  # (step, val bpb) reports
    step_seconds: list = field(default_factory=list)  # duration of each training step


def lr_scale(step: int, elapsed_s: float, cfg) -> float:
    scale = 1.0
    if cfg.lr_warmup_steps > 0:
        scale = min(1.0, (step + 1) / cfg.lr_warmup_steps)
    if cfg.warmdown_iters <= 0:
        return scale
    remaining = float(max(cfg.iterations - step, 0))
    if cfg.max_wallclock_seconds > 0 and step > 0:
        step_s = elapsed_s / step
        remaining = min(remaining, max(cfg.max_wallclock_seconds - elapsed_s, 0.0) / max(step_s, 1e-9))
    # The floor holds the warmdown only; the warmup ramp still starts from near zero.
    return scale * max(min(1.0, remaining / cfg.warmdown_iters), cfg.lr_floor)


def seq_stage(step: int, elapsed_s: float, cfg) -> int:
    """Index into [*seq_len_stages, seq_len] at this point: equal shares of training progress, by steps or by
    the wallclock cap when one is set and it ends the run first (as QAT is timed)."""
    progress = step / max(cfg.iterations, 1)
    if cfg.max_wallclock_seconds > 0:
        progress = max(progress, elapsed_s / cfg.max_wallclock_seconds)
    n = len(cfg.seq_len_stages) + 1
    return min(int(progress * n + 1e-9), n - 1)  # the tolerance: step 2 of 6 is a third exactly


def batch_plan(cfg, world_size: int, device_type: str = "cpu") -> tuple[int, int, int]:
    """(tokens per pass, passes per rank, data spans per pass) of one step over `world_size` ranks.

    A step's batch_tokens are shared out over the ranks; each rank runs passes of micro_batch_tokens
    (0 = its whole share at once on a CPU; on a GPU, passes no larger than GPU_PASS_TOKENS), as the official
    script runs 8 / WORLD_SIZE accumulation steps.
    A split that would leave a rank a fraction of a sequence is refused before anything trains.
    """
    per_rank, left = divmod(cfg.batch_tokens, world_size)
    if left or per_rank % cfg.seq_len:
        raise ConfigError(f"train.batch_tokens {cfg.batch_tokens} does not split over {world_size} ranks into whole "
                          f"sequences of train.seq_len {cfg.seq_len} ({cfg.batch_tokens / world_size:g} tokens per rank): "
                          f"use a rank count that divides {cfg.batch_tokens // cfg.seq_len} sequences")
    for n in cfg.seq_len_stages:
        if per_rank % n:
            raise ConfigError(f"train.seq_len_stages length {n} does not divide the {per_rank} tokens per rank of "
                              f"train.batch_tokens {cfg.batch_tokens} over {world_size} ranks")
    micro_tokens = min(cfg.micro_batch_tokens or (gpu_pass_tokens(per_rank, [cfg.seq_len, *cfg.seq_len_stages])
                                                  if device_type == "cuda" else per_rank), per_rank)
    if per_rank % micro_tokens:
        raise ConfigError(f"train.micro_batch_tokens {micro_tokens} does not divide the {per_rank} tokens per rank "
                          f"of train.batch_tokens {cfg.batch_tokens} over {world_size} ranks")
    accum = per_rank // micro_tokens
    # Each pass (rank x micro-batch) takes its share of the step's data spans; with a share that does
    # not divide evenly, every pass takes one span of its own.
    passes = world_size * accum
    spans = cfg.data_spans // passes if cfg.data_spans % passes == 0 else 1
    return micro_tokens, accum, spans


def gpu_pass_tokens(per_rank: int, lengths: list) -> int:
    """The largest pass that divides a rank's share into whole sequences of every length and is no larger than
    the official script's per-GPU pass: its activations then fit where the official script's do."""
    units = per_rank // math.lcm(*lengths)
    passes = next((k for k in range(1, units + 1) if units % k == 0 and per_rank // k <= GPU_PASS_TOKENS), units)
    return per_rank // passes


def keep_freed_memory() -> None:
    """On glibc, serve large CPU tensors from the heap and keep freed memory for reuse.

    Otherwise every tensor over the mmap threshold is fresh pages from the kernel, page-faulted in on
    each allocation: measured here, that makes a 32 MB elementwise op about 5x slower.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX = 0
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD = 1 GiB
    except (OSError, AttributeError):
        pass


def finite_loss(total: torch.Tensor, accum: int, step: int) -> float:
    """The step's mean loss over its passes, read from the device; TrainingDiverged when it is not finite."""
    loss = float(total.item()) / accum
    if not math.isfinite(loss):
        raise TrainingDiverged(f"training loss became {loss} at step {step}")
    return loss


def compiles(mode: str, device: torch.device) -> bool:
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def maybe_compile(model: nn.Module, mode: str, device: torch.device) -> nn.Module:
    if compiles(mode, device):
        return torch.compile(model, dynamic=False, fullgraph=True, backend=COMPILE_BACKEND)
    return model


def training_graphs(cfg) -> list[tuple[int, bool]]:
    """(sequence length, QAT on) of every graph a compiled run can train with, the last stage's last: one per
    stage, and one more per stage that QAT can overlap (QAT and the stages are timed by the same progress)."""
    lengths = list(dict.fromkeys([*cfg.seq_len_stages, cfg.seq_len]))
    n = len(cfg.seq_len_stages) + 1
    graphs = [(length, False) for length in lengths]
    if cfg.qat_fraction > 0:
        stages = [*cfg.seq_len_stages, cfg.seq_len]
        # Stage i ends at progress (i + 1) / n and QAT starts at 1 - qat_fraction (both less a tolerance of 1e-9, which
        # leaves a window too short to hold a step where they meet exactly).
        overlapped = [stages[i] for i in range(n) if (i + 1) / n > 1.0 - cfg.qat_fraction]
        graphs += [(length, True) for length in dict.fromkeys(overlapped)]
    return graphs


def warmup_plan(cfg, compiled: bool) -> list[tuple[int, bool]]:
    """(sequence length, QAT on) of each priming step: cfg.warmup_steps of them, and with compiling at least one per
    training graph, so every graph compiles here, outside the timed training, and none inside it."""
    graphs = training_graphs(cfg)
    steps = max(cfg.warmup_steps, len(graphs)) if compiled else cfg.warmup_steps
    plan = [graphs[0]] * max(steps - len(graphs), 0) + graphs
    return plan[len(plan) - steps :] if steps else []


@contextlib.contextmanager
def recompile_limit(graphs: int):
    """Dynamo's limit on graphs per compiled function raised to the run's graph count where that is higher (default 8:
    past it a function silently runs eager)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    with config.patch(**{name: max(getattr(config, name), graphs)}):
        yield


def train(model: nn.Module, cfg, loader, device: torch.device, validate=None, on_val=None,
          log=print, world_size: int = 1) -> TrainResult:
    """Train `model` in place.

    validate(model) -> val bpb is called every cfg.val_every steps; on_val(step, bpb) receives the
    result and may raise to stop the run (a pruner does). Raises TrainingDiverged on a NaN/inf loss.
    """
    with fused_ops(cfg.fused_ops), recompile_limit(len(training_graphs(cfg)) + 2):
        return _train(model, cfg, loader, device, validate, on_val, log, world_size)


def _train(model, cfg, loader, device, validate, on_val, log, world_size) -> TrainResult:
    micro_tokens, accum, spans = batch_plan(cfg, world_size, device.type)
    lengths = [*cfg.seq_len_stages, cfg.seq_len]  # training context per stage, at the same tokens per step
    torch.manual_seed(cfg.seed)
    optimizers, muon = build_optimizers(model, cfg)
    # QAT wraps the model (no wrapper at all when off, so existing runs are unchanged bit for bit).
    qat = QATForward(model, cfg.qat_bits, cfg.qat_clip, cfg.qat_embed_bits, cfg.qat_embed_clip) if cfg.qat_fraction > 0 else None
    # A compiled graph guards on the rotary tables: filled once for every length the run trains at (the caller
    # reserves its eval length too), no stage change or validation refills them.
    reserve_positions(model, max(cfg.seq_len_stages + [cfg.seq_len]), device)
    forward = maybe_compile(model if qat is None else qat, cfg.compile, device)
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        # The only buffers (rotary frequencies) are equal on every rank and never change: no broadcast before each
        # forward (the official script sets the same). Newer torch names it forward_sync_buffers (broadcast_buffers
        # warns there); older torch knows broadcast_buffers only.
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters else "broadcast_buffers"
        forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None, **{no_sync: False})

    def run_step(step: int, elapsed: float, seq_len: int) -> torch.Tensor:
        scale = lr_scale(step, elapsed, cfg)
        frac = min(step / cfg.muon_momentum_warmup_steps, 1.0) if cfg.muon_momentum_warmup_steps > 0 else 1.0
        for group in muon.param_groups:
            group["momentum"] = (1 - frac) * cfg.muon_momentum_warmup_start + frac * cfg.muon_momentum
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * scale
        total = torch.zeros((), device=device)
        # The rate term depends on the weights only: added once per step, to the first pass's loss (computed in
        # eager fp32, outside the compiled graph; equal on every rank, so DDP's averaging leaves it as is).
        rate = qat.rate_bits() if qat is not None and qat.active and cfg.rate_lambda > 0 else None
        for micro in range(accum):
            if world_size > 1:
                forward.require_backward_grad_sync = micro == accum - 1
            x, y = loader.next_batch(micro_tokens, seq_len, spans)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.autocast):
                loss = forward(x, y)
            objective = loss / accum
            if rate is not None and micro == 0:
                objective = objective + cfg.rate_lambda * rate
            objective.backward()
            total += loss.detach()
        if cfg.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
        for opt in optimizers:
            opt.step()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        return total  # the sum over passes, on the device: read (a host sync on a GPU) only where it is needed

    priming = warmup_plan(cfg, compiles(cfg.compile, device))
    if priming:
        # Prime compiled graphs (each stage's, with and without QAT) and allocator, then restore the initial state
        # and data position: switching stage or QAT later compiles nothing.
        model_state = copy.deepcopy(model.state_dict())
        opt_states = [copy.deepcopy(opt.state_dict()) for opt in optimizers]
        stream_state = (loader.stream.file_index, loader.stream.pos, loader.stream.tokens)
        for i, (seq_len, qat_on) in enumerate(priming):
            if qat is not None:
                qat.active = qat_on
            run_step(i, 0.0, seq_len)
        model.load_state_dict(model_state)
        for opt, state in zip(optimizers, opt_states):
            opt.load_state_dict(state)
        loader.stream.file_index, loader.stream.pos, loader.stream.tokens = stream_state
        if qat is not None:
            qat.active = False

    result = TrainResult(steps=0, train_tokens=0, train_seconds=0.0, stopped_by="iterations", final_train_loss=float("nan"))
    model.train()
    # EMA: an fp32 shadow of every parameter, from the weights training starts with (none at all when off).
    params = list(model.parameters())
    ema = [p.detach().float().clone() for p in params] if cfg.ema_decay > 0 else None
    synchronize(device)
    elapsed, t0 = 0.0, time.perf_counter()
    step, next_val, previous = 0, cfg.val_every_seconds, 0.0
    qat_next, stage, stage_next = qat_due(0, 0.0, cfg), -1, seq_stage(0, 0.0, cfg)
    while step < cfg.iterations:
        if qat is not None and qat_next and not qat.active:
            qat.active = True
            embed = f" embedding int{cfg.qat_embed_bits} clip {cfg.qat_embed_clip:g}" if cfg.qat_embed_bits else ""
            log(f"step {step}/{cfg.iterations} qat on: int{cfg.qat_bits} clip {cfg.qat_clip:g}{embed} rate_lambda {cfg.rate_lambda:g}")
        if stage_next > stage:
            stage = stage_next
            if cfg.seq_len_stages:
                log(f"step {step}/{cfg.iterations} seq_len {lengths[stage]} (stage {stage + 1}/{len(lengths)})")
        total = run_step(step, elapsed + time.perf_counter() - t0, lengths[stage])
        if ema is not None:  # every rank holds the same weights after a step, so the shadows stay equal too
            torch._foreach_lerp_(ema, [p.detach().float() for p in params], 1.0 - cfg.ema_decay)
        step += 1
        logged = cfg.log_every > 0 and (step <= 5 or step % cfg.log_every == 0)
        # Reading the loss waits for the step to finish: on a GPU only on the steps that log it and every
        # LOSS_CHECK_EVERY steps (a NaN stays NaN, so a divergence is still caught); on the CPU, where it costs
        # nothing, after every step.
        if logged or device.type != "cuda" or step % LOSS_CHECK_EVERY == 0:
            loss = result.final_train_loss = finite_loss(total, accum, step)
        now = elapsed + time.perf_counter() - t0
        if logged:
            if world_size > 1:  # the step's loss over every rank's share, as one rank with all the micro-batches has it
                shared = total / accum
                dist.all_reduce(shared)
                loss = float(shared.item()) / world_size
            log(f"step {step}/{cfg.iterations} train_loss {loss:.4f} train_time {now:.1f}s step_avg {1000 * now / step:.1f}ms")
        result.step_seconds.append(now - previous)
        # Stop when the next step would cross the cap, so the training time stays within it: the cap is a
        # hard constraint. The next step is budgeted at 1.5x the slowest of the last few, because on a busy
        # machine one step can take several times its neighbours (a trial 9 ms over a 3 s cap was seen).
        slowest = max(result.step_seconds[-STEP_HISTORY:])
        capped = cfg.max_wallclock_seconds > 0 and now + 1.5 * slowest > cfg.max_wallclock_seconds
        previous = now
        due = (cfg.val_every > 0 and step % cfg.val_every == 0) or (cfg.val_every_seconds > 0 and now >= next_val)
        qat_next, stage_next = qat_due(step, now, cfg), seq_stage(step, now, cfg)
        if world_size > 1 and (cfg.max_wallclock_seconds > 0 or cfg.val_every_seconds > 0):
            # Clocks differ between ranks: every rank must stop, validate, start QAT and switch stage at the same step.
            flags = torch.tensor([int(capped), int(due), int(qat_next), stage_next], device=device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            capped, due, qat_next, stage_next = flags.tolist()
        if capped:
            result.stopped_by = "wallclock"
        if validate is not None and due and step < cfg.iterations and not capped:
            next_val += cfg.val_every_seconds
            synchronize(device)
            elapsed = elapsed + time.perf_counter() - t0
            bpb = validate(model)
            result.val_history.append((step, bpb))
            log(f"step {step}/{cfg.iterations} val_bpb {bpb:.4f}")
            if on_val is not None:
                on_val(step, bpb)
            t0 = time.perf_counter()
        if capped:
            break
    if step:
        result.final_train_loss = finite_loss(total, accum, step)
    if ema is not None:  # the EMA becomes the model: what is calibrated, quantized and stored
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    synchronize(device)
    result.steps = step
    result.train_seconds = previous  # training time at the end of the last step (validation excluded)
    result.train_tokens = step * cfg.batch_tokens
    return result
