"""The evaluation settings chosen jointly ([allocation] eval_choice = "joint"): stride x TTT setting x n-gram tilt as
one small search under the eval cap, instead of the stride first and TTT on whatever time the stride left.

Pieces are measured once each against the plain chunked score: a piece's gain is the drop in loss it gives on the
held-out *training* tokens (never validation), its time ratio its seconds over the plain score's on the same text.
Strides, the tilt and the plain score come from held-out passes that keep every window's losses (sweep.py: each
multiple of a pass's stride and the chunks, tilted or not, are read off it), the largest stride's first and a smaller
one's only where its windows are predicted to fit (from the unroll choice's plain pass and the windows already swept: a
window costs the same at every stride) and no larger stride was too slow. The tilt is timed by its own held-out run
only where its gain could make it a candidate, and TTT on a validation prefix (see PREFIX), then scored on the held-out
tokens where it fits. A piece is timed only until it is plainly too slow: a run past (or on pace to run past) the cap's
share of its text (timing.py) means the piece does not fit even alone, so it is stopped there, its gain is not measured
and it is in no candidate; a piece that is only a smaller stride, a smaller TTT chunk or a larger rank than one that
did not fit is not timed at all (the demo's TTT settings, timed to the end at 5-12x the plain score, were most of a
trial's time outside training); nor is a piece whose gain is below MIN_GAIN. A combination's gain is predicted as the
sum of its pieces' gains (the stated assumption: the pieces act on different things, the context, the weights, the
output; a stride of a TTT chunk or more changes nothing under TTT and is no candidate), its eval time on the whole
split as the plain time per target times the product of its pieces' ratios. The combination with the largest predicted
gain whose predicted time fits EVAL_TIME_MARGIN of the cap at the submission's ranks wins (fits_eval_cap: the same rule
as the sequential choice); its held-out loss is then measured as a whole, and every candidate with its predicted and
(for the winner) measured gain goes into allocation.json. The allocation's confirmation scores it on the split.
"""

import dataclasses
import itertools
import math
from dataclasses import dataclass, field

import torch

from pgolf.bpb import ByteLuts, load_tokenizer
from pgolf.config import ConfigError, EvalConfig, RunConfig, validate
from pgolf.shards import token_count, validation_tokens
from pgolf.submission import score_tokens
from pgolf.ttt import stride_inside_chunks
from search.allocation.evaluation import fits_eval_cap
from search.allocation.sweep import setting_windows, sweep
from search.allocation.timing import (PACE_SLACK, at_least_as_slow, cheapest_first, prefix_limit, timed_unless_slower,
                                     timed_within, warm_up)
from search.allocation.ttt import TIME_SAMPLE, ttt_settings


# The least held-out gain (nats per token) a piece must give to be in a candidate. Below it a piece buys nothing
# measurable for its eval time and its code: the demo's tilt, at +5e-7 nats (a token or two of 16,384), still won
# "stride 128 + tilt" over stride 128 alone, adding 28% to the eval time, the n-gram module's bytes, and a held-out run
# to measure the pair.
MIN_GAIN = 1e-4

# Where a piece's time ratio is measured. Strides and the tilt cost the same per target on any text, so the held-out
# runs that measure their gain also time them; TTT adapts per document, so its pace depends on the documents side by
# side: it is timed on the validation prefix. Timed on the held-out run that scores it, it would take one run per
# setting instead of two, but that run over-predicted the split's time by 12-30% on six (demo checkpoint, TTT setting)
# pairs where the prefix did by -3 to +19%: on one checkpoint chunk 128 rank 8, which fits the cap with room, was
# stopped there and rank 4 chosen, 0.013 bpb worse.
PREFIX, HELD_OUT = "validation prefix", "held-out"


@dataclass
class Piece:
    family: str  # stride | ttt | tilt
    label: str
    changes: dict  # the eval keys it sets
    gain: float | None = None  # held-out loss drop against the plain score, nats per token (None: not measured)
    time_ratio: float | None = 1.0  # its timed seconds over the plain score's (stopped: its limit's; None: not timed, gain under the floor)
    stopped: bool = False  # its timed run went past the longest time that fits the cap: too slow even alone
    timed: bool = True  # False: not timed (at least as slow as a stopped piece, timing.at_least_as_slow; a stride its
                        # windows predict too slow; a tilt whose gain is under the floor)
    timed_on: str = ""  # where its time ratio comes from: PREFIX or HELD_OUT (", stride N's windows": read off a pass at
                        # stride N; ", predicted from X": not run, its windows at the pace of X)


@dataclass
class Combination:
    pieces: tuple
    predicted_gain: float
    predicted_seconds: float
    measured_gain: float | None = None
    fits: bool = False
    chosen: bool = False

    def label(self) -> str:
        return " + ".join(p.label for p in self.pieces) or "plain chunks"

    def record(self) -> dict:
        return {"setting": self.label(), "predicted_gain": self.predicted_gain, "predicted_eval_seconds": self.predicted_seconds,
                "measured_gain": self.measured_gain, "fits": self.fits, "chosen": self.chosen}


@dataclass
class JointChoice:
    evaluation: EvalConfig
    pieces: list = field(default_factory=list)
    combinations: list = field(default_factory=list)

    def record(self) -> dict:
        return {"pieces": [{"family": p.family, "setting": p.label, "held_out_gain": p.gain, "time_ratio": p.time_ratio,
                            "stopped_over_cap": p.stopped, "timed": p.timed, "timed_on": p.timed_on} for p in self.pieces],
                "candidates": [c.record() for c in sorted(self.combinations, key=lambda c: -c.predicted_gain)]}


def candidate_pieces(config: RunConfig, space_alloc) -> dict[str, list[Piece]]:
    """family -> its pieces the space allows (the plain setting of each family is the absence of a piece)."""
    base = config.resolved_eval()
    strides = [s for s in sorted(set(space_alloc.eval_stride)) if 0 < s < base.seq_len]
    families = {"stride": [Piece("stride", f"stride {s}", {"stride": s}) for s in strides], "ttt": [], "tilt": []}
    for setting in ttt_settings(config, space_alloc)[1:]:
        keys = {"ttt": setting.ttt, "ttt_chunk": setting.ttt_chunk, "ttt_rank": setting.ttt_rank}
        label = f"TTT {setting.ttt} chunk {setting.ttt_chunk}" + (f" rank {setting.ttt_rank}" if setting.ttt == "lora" else "")
        families["ttt"].append(Piece("ttt", label, keys))
    families["tilt"] = [Piece("tilt", f"tilt order {n}", {"ngram_order": n}) for n in sorted(set(space_alloc.ngram_order)) if n > 0]
    return {k: v for k, v in families.items() if v}


def _sweeps(model, base: EvalConfig, strides: list, held_out, luts, runtime, limit: float, tilt_orders: list,
            plain_seconds: float) -> tuple[list, dict, set]:
    """Sweeps of the held-out tokens (sweep.py), the largest stride not yet covered first, until the plain chunks and
    every stride that fits are covered: (sweeps, {stride: (its predicted seconds, what predicts them)} and {strides
    slower than one whose sweep was stopped}, neither swept). A window costs the same at every stride, so a stride is
    swept only where its windows are predicted to fit: at the pace of the unroll choice's plain pass over these tokens
    (plain_seconds) before any sweep, then at the pace of the windows already swept (a stride's windows ran 1.1-1.3x a
    plain window's time in the demo, so only the sweeps' own pace rules a stride in). In the demo a pass is one batch,
    so a stride past its limit is only stopped at its end: a demo trial whose strides were both too slow swept 128,
    then 64, then the chunks (8.3 s). A stride's sweep is stopped past `limit` (too slow to fit alone: that stride and
    every smaller one stay uncovered); the chunks' never is (the plain loss is every gain's reference)."""
    windows = {s: len(setting_windows(held_out.numel() - 1, base.seq_len, s)) for s in strides + [0]}
    predicted = {s: (plain_seconds * windows[s] / windows[0], "the plain pass") for s in strides}
    predicted = {s: guess for s, guess in predicted.items() if guess[0] > PACE_SLACK * limit}
    sweeps, over, slower = [], [], set()
    for stride in sorted((s for s in strides if s not in predicted), reverse=True) + [0]:
        if _covering(sweeps, stride) is not None:
            continue
        setting = dataclasses.replace(base, stride=stride)
        if any(at_least_as_slow(setting, o) for o in over):  # a smaller stride than one that was too slow
            slower.add(stride)
            continue
        if stride and sweeps:
            seconds, source = min((s.seconds_of(stride), s.stride) for s in sweeps)
            if seconds > PACE_SLACK * limit:
                predicted[stride] = (seconds, f"stride {source}'s windows")  # only strides are swept before the chunks
                continue
        swept = sweep(model, setting, held_out, luts, runtime, limit if stride else math.inf, tilt_orders)
        if swept is not None and swept.seconds <= (limit if stride else math.inf):
            sweeps.append(swept)
        else:
            over.append(setting)
    return sweeps, predicted, slower


def _covering(sweeps: list, stride: int):
    """The sweep that ran every window of `stride`'s pass, or None."""
    return next((s for s in sweeps if s.covers(stride)), None)


def _valid(config: RunConfig, evaluation: EvalConfig) -> bool:
    try:
        validate(dataclasses.replace(config, eval=evaluation))
    except ConfigError:
        return False
    return True


def choose_jointly(model, config: RunConfig, space_alloc, caps, data, runtime, held_out: torch.Tensor, plain_seconds: float,
                   margin: float, log=print, time_sample: int = TIME_SAMPLE) -> JointChoice:
    """config: the trial's config with the chosen unroll count and stride 0, TTT and tilt off; plain_seconds: a plain
    chunked pass's over held_out at that count (choose_repeats times it); time_sample: the validation prefix TTT is
    timed on."""
    base = dataclasses.replace(config.resolved_eval(), stride=0, ttt="off", ngram_order=0)
    families = candidate_pieces(config, space_alloc)
    if not families:
        return JointChoice(base)
    luts = ByteLuts(load_tokenizer(data.tokenizer, config.model.vocab_size), config.model.vocab_size)
    val_targets = (token_count(data.val_pattern) - 1) // base.seq_len * base.seq_len
    pieces = [p for family in families.values() for p in family]
    ttt = cheapest_first([dataclasses.replace(base, **p.changes) for p in families.get("ttt", [])])  # for the warm-up
    sample = validation_tokens(data.val_pattern, base.seq_len, config.model.vocab_size, time_sample)
    warm_up(model, [base] + ttt[:1], sample, luts, runtime)
    # The longest run on each text that still fits the cap alone (other pieces only add time): the cap's share of its
    # targets.
    texts = {HELD_OUT: held_out, PREFIX: sample}
    limits = {text: prefix_limit(runtime, caps, margin, tokens, val_targets) for text, tokens in texts.items()}
    limit = limits[HELD_OUT]

    def setting_of(piece: Piece) -> EvalConfig:
        return dataclasses.replace(base, **piece.changes)

    timed = {}  # piece label -> its seconds (stopped: the limit)
    tilts = families.get("tilt", [])
    sweeps, predicted, slower = _sweeps(model, base, [p.changes["stride"] for p in families.get("stride", [])], held_out, luts, runtime,
                                limit, [p.changes["ngram_order"] for p in tilts], plain_seconds)
    # The plain score's pace is the sweep's (its windows cost what chunks do). A piece's predicted time on the split is
    # its own seconds scaled by the targets, whatever this pace: a neighbour slowing the sweep makes every setting it
    # times look slower, never one cheaper than another.
    chunks = _covering(sweeps, 0)
    pace = chunks.seconds_of(0) / max(held_out.numel() - 1, 1)
    plain_loss = chunks.loss(0)
    for piece in families.get("stride", []):
        stride, piece.timed_on = piece.changes["stride"], HELD_OUT
        swept = _covering(sweeps, stride)
        piece.stopped = swept is None
        if stride in predicted:
            timed[piece.label], source = predicted[stride]
            piece.timed, piece.timed_on = False, f"{HELD_OUT}, predicted from {source}"
        elif stride in slower:
            timed[piece.label], piece.timed = limit, False
        elif swept is None:
            timed[piece.label] = limit
        else:
            timed[piece.label], piece.gain = swept.seconds_of(stride), plain_loss - swept.loss(stride)
            piece.timed_on = HELD_OUT if swept.stride == stride else f"{HELD_OUT}, stride {swept.stride}'s windows"
    for piece in tilts:  # timed by its own held-out run only where its gain, known from the sweep, could make it a candidate
        piece.gain, piece.timed_on = plain_loss - chunks.loss(0, piece.changes["ngram_order"]), HELD_OUT
        if piece.gain < MIN_GAIN:
            piece.timed, piece.time_ratio = False, None
            continue
        result = timed_within(model, setting_of(piece), held_out, luts, runtime, limit)
        piece.stopped = result is None or result.seconds > limit
        piece.gain = None if piece.stopped else plain_loss - result.loss
        timed[piece.label] = limit if result is None else result.seconds

    def time_one(piece: Piece):
        return timed_within(model, setting_of(piece), sample, luts, runtime, limits[PREFIX]), limits[PREFIX]

    for piece, result, fits, was_timed in timed_unless_slower(cheapest_first(families.get("ttt", []), key=setting_of), setting_of, time_one):
        piece.stopped, piece.timed, piece.timed_on = result is None, was_timed, PREFIX
        timed[piece.label] = limits[PREFIX] if result is None else result.seconds
        if fits:
            piece.gain = plain_loss - score_tokens(model, setting_of(piece), held_out, luts, runtime).loss
    for piece in pieces:
        if piece.label in timed:
            piece.time_ratio = timed[piece.label] / max(pace * (texts[PREFIX if piece.timed_on == PREFIX else HELD_OUT].numel() - 1), 1e-9)
        if not piece.timed and not piece.stopped:
            log(f"allocation: {piece.label}: held-out gain {piece.gain:+.4f} nats, below the {MIN_GAIN:g}-nat floor: not timed, no candidate")
        elif piece.gain is None:
            how = "stopped" if piece.timed else "not timed: slower than a setting that did not fit"
            if "predicted" in piece.timed_on:
                log(f"allocation: {piece.label}: too slow to fit the eval cap alone (time x{piece.time_ratio:.2f} "
                    f"{piece.timed_on.split(', ')[1]}, not timed), gain not measured")
            else:
                log(f"allocation: {piece.label}: too slow to fit the eval cap alone (time {'>' if piece.stopped else ''}"
                    f"x{piece.time_ratio:.2f}{', ' + how if piece.stopped else ''}), gain not measured")
        else:
            floor = "" if piece.gain >= MIN_GAIN else f", below the {MIN_GAIN:g}-nat floor: no candidate"
            log(f"allocation: {piece.label}: held-out gain {piece.gain:+.4f} nats, time x{piece.time_ratio:.2f}{floor}")
    combinations = []
    measured = [[p for p in family if p.gain is not None and p.gain >= MIN_GAIN] for family in families.values()]
    for chosen in itertools.product(*[[None] + family for family in measured]):
        parts = tuple(p for p in chosen if p is not None)
        evaluation = dataclasses.replace(base, **{k: v for p in parts for k, v in p.changes.items()})
        idle_stride = evaluation.ttt != "off" and evaluation.stride and not stride_inside_chunks(evaluation)
        if idle_stride or not _valid(config, evaluation):
            continue  # an idle stride: the same evaluation as TTT without it, the same candidate twice
        ratio = 1.0
        for p in parts:
            ratio *= p.time_ratio
        combination = Combination(parts, sum(p.gain for p in parts), pace * val_targets * ratio)
        combination.fits = fits_eval_cap(combination.predicted_seconds, runtime.world_size, caps, margin)
        combinations.append(combination)
    fitting = [c for c in combinations if c.fits] or [c for c in combinations if not c.pieces]
    winner = max(fitting, key=lambda c: (c.predicted_gain, -c.predicted_seconds))
    winner.chosen = True
    evaluation = dataclasses.replace(base, **{k: v for p in winner.pieces for k, v in p.changes.items()})
    if len(winner.pieces) > 1 and evaluation.ttt == "off":  # a stride with the tilt: the sweep measured it whole
        winner.measured_gain = plain_loss - _covering(sweeps, evaluation.stride).loss(evaluation.stride, evaluation.ngram_order)
    elif len(winner.pieces) > 1:  # a single piece's gain was measured as it is; a sum is a prediction: measure it whole
        winner.measured_gain = plain_loss - score_tokens(model, evaluation, held_out, luts, runtime).loss
    else:
        winner.measured_gain = winner.predicted_gain
    log(f"allocation: evaluation chosen jointly from {len(combinations)} candidates: {winner.label()} (predicted gain "
        f"{winner.predicted_gain:+.4f}, measured {winner.measured_gain:+.4f} nats; predicted eval {winner.predicted_seconds:.1f}s)")
    return JointChoice(evaluation, pieces, combinations)
