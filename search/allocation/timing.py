"""Timing an evaluation setting only as long as the answer is in doubt.

The allocation times each evaluation setting on a validation prefix (or, where the text does not set the pace, on
its held-out run) to predict its time on the whole split; a setting whose run already took longer than the most
the eval cap allows is out, however long the rest of the run would take. A timed run is therefore stopped at that
limit (or before it, once its pace says it will pass it), and a setting that can only be slower than one that did not
fit is not run at all: in the demo study the TTT settings and small strides that could never fit were each timed to
the end (5-12x the plain score) and then scored on the held-out tokens as well, most of a trial's time outside
training.
"""

import dataclasses
import math
import time

from pgolf.evaluate import EvalResult, ScoringPass, run_pass
from pgolf.submission import score_tokens
from search.allocation.evaluation import allowed_eval_seconds


class OverTimeLimit(Exception):
    """A timed run that went past its limit (stopped at the first stretch that ended past it)."""


# A run is also stopped once its pace says it cannot fit: after PACE_AFTER of its targets, if their time scaled to all
# of them is past PACE_SLACK times the limit. Strides and the tilt score at an even pace (the projection from a fifth
# of the run was their time to 1%); TTT scores a document's first chunk before adapting on it, so its early pace runs
# fast (projected at 0.6-0.85x its time in the demo): its projection only grows, and the rule stops it late, never
# wrongly. The slack covers that 1% (at 1.1, a setting up to 10% over its limit ran to the limit before it was stopped).
# A pass of one batch (a demo stride's held-out pass) records once, at its end: joint.py predicts strides from windows.
PACE_AFTER = 0.2
PACE_SLACK = 1.02


class LimitedPass(ScoringPass):
    """A scoring pass that stops with OverTimeLimit once it has run `limit` seconds from `started` (a perf_counter
    time), or once its pace so far says it will (PACE_AFTER, PACE_SLACK); `excluded`: seconds a subclass spent on work
    of its own, not the setting's, which do not count."""

    started, limit, excluded = 0.0, float("inf"), 0.0

    def record(self, *args, **kwargs) -> None:
        elapsed = time.perf_counter() - self.started - self.excluded
        if elapsed > self.limit:
            raise OverTimeLimit
        super().record(*args, **kwargs)
        done, total = float(self.sums[1]), self.tokens.numel() - 1  # targets scored so far (rank 0 alone: all of them)
        if done >= PACE_AFTER * total and elapsed * total / done > PACE_SLACK * self.limit:
            raise OverTimeLimit


def timed_within(model, evaluation, tokens, luts, runtime, limit: float) -> EvalResult | None:
    """The score of tokens under evaluation as pgolf's evaluation takes it (score_tokens), or None when it runs past
    `limit` seconds; rank 0 alone (allocation runs after training leaves the group): a rank stopping by itself
    would leave the others waiting."""
    return run_limited(LimitedPass(model, tokens, luts, evaluation, runtime), limit)


def run_limited(scoring: LimitedPass, limit: float) -> EvalResult | None:
    """A prepared limited pass run (run_pass), or None when it runs past `limit` seconds."""
    if scoring.world_size > 1:
        raise ValueError("a time-limited evaluation runs on one process")
    scoring.started, scoring.limit = time.perf_counter(), limit  # run_pass's clock starts after this: the limit errs long
    try:
        return run_pass(scoring)
    except OverTimeLimit:
        return None


def prefix_limit(runtime, caps, margin: float, prefix, split_targets: int) -> float:
    """The longest a run on the prefix (a token tensor) may take for the same setting to fit the cap with margin on a
    split of split_targets targets: eval time is predicted in proportion to the targets scored."""
    return allowed_eval_seconds(runtime.world_size, caps, margin) * (prefix.numel() - 1) / max(split_targets, 1)


def warm_up(model, settings: list, prefix, luts, runtime) -> None:
    """Each setting scored untimed on the prefix's first two sequences: the first run of a mode pays one-time costs
    (TTT: autograd, first allocations). In the demo the first TTT setting timed 1.2-1.4x slower than the next (same
    chunk, larger rank) without it, 1.17x in the one trial measured with it."""
    for evaluation in settings:
        score_tokens(model, evaluation, prefix[: 2 * evaluation.seq_len + 1], luts, runtime)


def at_least_as_slow(a, b) -> bool:
    """Whether eval settings a must take at least as long as b: the same settings but a smaller stride (more windows
    over the same targets), or TTT of the same kind at a smaller chunk (more windows and adaptation steps over the
    same targets) and a rank no smaller (larger adapters: more work per step). A setting at least as slow as one
    that went past the limit is not timed at all."""
    if a == b:
        return False
    if a.stride != b.stride:
        return dataclasses.replace(a, stride=b.stride) == b and 0 < a.stride < (b.stride or math.inf)
    if a.ttt == "off" or b.ttt != a.ttt:
        return False
    same = dataclasses.replace(a, ttt_chunk=b.ttt_chunk, ttt_rank=b.ttt_rank) == b
    return same and a.ttt_chunk <= b.ttt_chunk and (a.ttt_rank >= b.ttt_rank or a.ttt != "lora")


def cheapest_first(settings: list, key=lambda s: s) -> list:
    """settings in an order where each comes after every setting it is at least as slow as: larger strides (0, chunks,
    first), larger TTT chunks and smaller ranks first; key gives a setting's eval config."""
    return sorted(settings, key=lambda s: (-(key(s).stride or math.inf), -key(s).ttt_chunk, key(s).ttt_rank))


def timed_unless_slower(items: list, setting_of, time_one):
    """Each item's timed run, in the order given (cheapest first: cheapest_first), as (item, result, fits, timed):
    time_one(item) gives (timed_within's result, the limit it ran under), and fits says it finished within that
    limit. An item whose setting (setting_of) is at least as slow as one that did not fit is not run:
    (item, None, False, False)."""
    over = []  # the settings that did not fit
    for item in items:
        setting = setting_of(item)
        if any(at_least_as_slow(setting, o) for o in over):
            over.append(setting)
            yield item, None, False, False
            continue
        result, limit = time_one(item)
        fits = result is not None and result.seconds <= limit  # finished just past it (its last sums): out too
        if not fits:
            over.append(setting)
        yield item, result, fits, True
