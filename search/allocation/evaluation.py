"""How a trained checkpoint is evaluated: the eval unroll count (lowest held-out training loss) and the
sliding-window stride (the smallest whose predicted time on the whole validation split fits the eval cap).
Test-time training, the third evaluation choice, is chosen after these (ttt.py)."""

import time

from objectives.constraints import at_submission_ranks
from pgolf.shards import token_count
from pgolf.submission import score
from search.allocation.sensitivity import mean_loss

EVAL_TIME_MARGIN = 0.7  # predicted eval time must fit in this fraction of the cap (timing noise)


def fits_eval_cap(seconds: float, measured_ranks: int, caps, margin: float = EVAL_TIME_MARGIN) -> bool:
    """Whether an eval time measured (or predicted) on measured_ranks processes fits the cap with margin, at the
    submission's ranks."""
    return at_submission_ranks(seconds, measured_ranks, caps) <= margin * caps.eval_seconds


def allowed_eval_seconds(measured_ranks: int, caps, margin: float = EVAL_TIME_MARGIN) -> float:
    """The longest eval time measured on measured_ranks processes that fits_eval_cap (at_submission_ranks is linear)."""
    return margin * caps.eval_seconds / at_submission_ranks(1.0, measured_ranks, caps)


def choose_repeats(model, config, space_alloc, tokens, autocast: bool, device) -> tuple[int, float]:
    """The eval unroll count with the lowest held-out loss of the float model (cheap; quantization shifts all alike),
    and the seconds its held-out pass took: a plain chunked pass over those tokens, which the joint choice predicts
    its strides' passes from (joint.py; it took what the chunks' held-out sweep takes, to 3%, on two demo trials)."""
    options = space_alloc.eval_repeats if config.model.loop_len > 0 and space_alloc.eval_repeats else [config.eval_repeats()]
    seq_len = config.eval_seq_len()
    loss, seconds = {}, {}
    for r in options:
        started = time.perf_counter()
        loss[r] = mean_loss(model, tokens, seq_len, r, autocast, device)  # its float() waits for the device
        seconds[r] = time.perf_counter() - started
    chosen = min(loss, key=loss.get)
    return chosen, seconds[chosen]


def choose_stride(model, config, space_alloc, caps, data, runtime, seconds_per_token=None) -> int:
    """The smallest allowed stride whose predicted full-validation eval time fits the cap (0 = chunks)."""
    strides = sorted(set(space_alloc.eval_stride), key=lambda s: s if s > 0 else 10**9)
    if strides == [0]:
        return 0
    if seconds_per_token is None:
        sample = score(model, config.resolved_eval(), data.val_pattern, data.tokenizer, runtime, limit=65_536)
        seconds_per_token = sample.seconds / max(sample.tokens, 1)
    # The unroll count scales the per-token cost with the number of blocks run.
    seconds_per_token *= blocks_run(config, config.eval_repeats()) / blocks_run(config, config.model.loop_repeats)
    full_tokens = token_count(data.val_pattern)
    for stride in strides:
        windows = 1.0 if stride == 0 else config.eval_seq_len() / stride
        if fits_eval_cap(seconds_per_token * full_tokens * windows, runtime.world_size, caps):
            return stride
    return 0


def blocks_run(config, repeats: int) -> int:
    m = config.model
    return m.num_layers + m.loop_len * (repeats - 1) + 1  # +1: the output layer, about one block's cost


def longest_ttt(config, space_alloc) -> dict:
    """The eval-mode settings whose script is longest (the TTT and tilt modules in when the space may turn them on,
    the widest numbers written), for the code budget."""
    longest = {"ngram_order": max(space_alloc.ngram_order)} if any(space_alloc.ngram_order) else {}
    if not space_alloc.ttt_chunk:
        return longest
    return {"ttt": config.eval.ttt if config.eval.ttt != "off" else "lora", "ttt_chunk": max(space_alloc.ttt_chunk),
            "ttt_rank": max(space_alloc.ttt_rank), **longest}
