"""Which test-time training setting a trained model evaluates with: the allocation's TTT step.

Each setting the space's [allocation] table allows (ttt_chunk x ttt_rank, and no TTT) is scored on the held-out
*training* tokens the sensitivities use (never validation: choosing on it would tune on the test set). The
lowest held-out loss wins among the settings whose eval time on the full validation split fits the eval cap
with margin. That time is predicted from a timed run on the first TIME_SAMPLE validation tokens (its score is
discarded, as the stride choice does): documents adapt side by side, so the split's own document layout sets
the pace, and a prefix with fewer documents side by side over-predicts, on the safe side. Each TTT setting is
timed first, and stopped once its run shows it cannot fit (timing.py), a smaller chunk or larger rank than one
that did not fit not timed at all; only a setting that fits is scored on the held-out tokens. The confirmation then measures the real time.
The other TTT keys (mode, targets, optimizer, learning rate, steps, reset, phase) come from the base config.
"""

import dataclasses
import math
from dataclasses import dataclass

import torch

from pgolf.bpb import ByteLuts, load_tokenizer
from pgolf.config import ConfigError, EvalConfig, RunConfig, validate
from pgolf.shards import token_count, validation_tokens
from pgolf.submission import score_tokens
from objectives.constraints import at_submission_ranks
from search.allocation.evaluation import fits_eval_cap
from search.allocation.timing import cheapest_first, prefix_limit, timed_unless_slower, timed_within, warm_up

TIME_SAMPLE = 16_384  # validation tokens timed per setting


@dataclass
class TTTMeasure:
    eval: EvalConfig
    loss: float | None  # held-out training loss, nats per token (None: too slow to fit, not measured)
    seconds: float | None  # measured on the held-out tokens
    predicted_seconds: float  # on the full validation split (stopped: the least it would be)
    stopped: bool = False  # its timed run was stopped past the longest time that fits the cap

    def label(self) -> str:
        e = self.eval
        return "no TTT" if e.ttt == "off" else f"TTT {e.ttt} chunk {e.ttt_chunk}" + (f" rank {e.ttt_rank}" if e.ttt == "lora" else "")


def ttt_settings(config: RunConfig, space_alloc) -> list[EvalConfig]:
    """No TTT, then every allowed (chunk, rank): eval settings, each valid for this config."""
    base = config.resolved_eval()
    mode = base.ttt if base.ttt != "off" else "lora"
    settings = [dataclasses.replace(base, ttt="off")]
    for chunk in space_alloc.ttt_chunk:
        for rank in space_alloc.ttt_rank if mode == "lora" else [base.ttt_rank]:
            candidate = dataclasses.replace(base, ttt=mode, ttt_chunk=chunk, ttt_rank=rank)
            try:
                validate(dataclasses.replace(config, eval=candidate))
            except ConfigError:  # e.g. a chunk longer than this trial's eval sequence
                continue
            settings.append(candidate)
    return settings


def choose_ttt(model, config: RunConfig, space_alloc, caps, data, runtime, held_out: torch.Tensor, margin: float,
               log=print) -> tuple[EvalConfig, list[TTTMeasure]]:
    """(the chosen eval settings, every setting measured); a config's own setting when the space allows no TTT."""
    settings = ttt_settings(config, space_alloc)
    if len(settings) == 1:
        return config.resolved_eval(), []
    luts = ByteLuts(load_tokenizer(data.tokenizer, config.model.vocab_size), config.model.vocab_size)
    seq_len = config.eval_seq_len()
    sample = validation_tokens(data.val_pattern, seq_len, config.model.vocab_size, TIME_SAMPLE)
    val_targets = (token_count(data.val_pattern) - 1) // seq_len * seq_len
    limit = prefix_limit(runtime, caps, margin, sample, val_targets)
    warm_up(model, settings[:1] + cheapest_first(settings[1:])[:1], sample, luts, runtime)
    no_ttt = settings[0]  # the fallback: timed to the end and always scored

    def time_one(setting: EvalConfig):
        bound = math.inf if setting is no_ttt else limit
        return timed_within(model, setting, sample, luts, runtime, bound), bound

    measures = []
    # Timed first (score discarded); scored on the held-out tokens only where it fits.
    for setting, timed, fits, was_timed in timed_unless_slower([no_ttt] + cheapest_first(settings[1:]), lambda s: s, time_one):
        seconds = limit if timed is None else timed.seconds
        predicted = seconds / max(sample.numel() - 1, 1) * val_targets
        result = score_tokens(model, setting, held_out, luts, runtime) if fits else None
        measures.append(TTTMeasure(setting, result.loss if result else None, result.seconds if result else None, predicted,
                                   stopped=timed is None))
        shown = (f"held-out loss {result.loss:.4f} in {result.seconds:.1f}s" if result else
                 "too slow to fit the eval cap, not scored" + (" (not timed: slower than one that did not fit)" if not was_timed else
                                                                " (timing stopped)" if timed is None else ""))
        log(f"allocation: {measures[-1].label()}: {shown}, predicted eval {'>' if timed is None else ''}{predicted:.1f}s "
            f"({at_submission_ranks(predicted, runtime.world_size, caps):.1f}s on {caps.eval_ranks or runtime.world_size} ranks)")
    return pick_ttt(measures, caps, runtime.world_size, margin).eval, measures


def pick_ttt(measures: list[TTTMeasure], caps, measured_ranks: int, margin: float) -> TTTMeasure:
    """The lowest held-out loss among the settings whose predicted eval time, at the submission's ranks, fits the cap
    with margin (the first, no TTT, when none does)."""
    fitting = [m for m in measures if m.loss is not None and fits_eval_cap(m.predicted_seconds, measured_ranks, caps, margin)] or measures[:1]
    return min(fitting, key=lambda m: m.loss)
