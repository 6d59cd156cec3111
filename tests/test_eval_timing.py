"""Timing an evaluation setting only as long as it may still fit (search/allocation/timing.py): a run past its limit
stops with the model exactly as it was; one within it is the same score as the submission's evaluation."""

import dataclasses
import time

import pytest
import torch

from pgolf.bpb import ByteLuts, load_tokenizer
from pgolf.datasets import DataPaths
from pgolf.model import GPT, full_precision
from pgolf.shards import validation_tokens
from pgolf.submission import Runtime, score_tokens
from search.allocation.evaluation import allowed_eval_seconds, fits_eval_cap
from pgolf.evaluate import run_pass
from search.allocation.timing import LimitedPass, OverTimeLimit, at_least_as_slow, cheapest_first, prefix_limit, timed_within
from search.allocation.ttt import choose_ttt
from space.core import AllocationSpace, Caps

from conftest import TOKENIZER, TRAIN_PATTERN, VAL_PATTERN, small_config

CPU = Runtime(device=torch.device("cpu"))


@pytest.fixture(scope="module")
def scored():
    config = small_config(eval=dict(autocast=False, batch_tokens=512, seq_len=128))
    torch.manual_seed(0)
    model = full_precision(GPT(config.model))
    tokens = validation_tokens(VAL_PATTERN, 128, 1024, 2048)
    luts = ByteLuts(load_tokenizer(TOKENIZER, 1024), 1024)
    return model, config.resolved_eval(), tokens, luts


@pytest.mark.parametrize("mode", [{}, {"stride": 64}, {"ttt": "lora", "ttt_chunk": 64}])
def test_a_run_past_its_limit_stops_and_leaves_the_model_as_it_was(scored, mode):
    model, evaluation, tokens, luts = scored
    evaluation = dataclasses.replace(evaluation, **mode)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.requires_grad for p in model.parameters()]
    model.train()
    assert timed_within(model, evaluation, tokens, luts, CPU, limit=0.0) is None  # past it at the first stretch
    assert model.training and [p.requires_grad for p in model.parameters()] == grads
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    within = timed_within(model, evaluation, tokens, luts, CPU, limit=float("inf"))
    assert within.loss == score_tokens(model, evaluation, tokens, luts, CPU).loss and within.tokens == tokens.numel() - 1


def test_a_run_whose_pace_cannot_fit_stops_before_its_limit(scored):
    model, evaluation, tokens, luts = scored  # chunked: four records of a quarter of the targets each
    def run(seconds_so_far: float, limit: float):
        scoring = LimitedPass(model, tokens, luts, evaluation, CPU)
        scoring.started, scoring.limit = time.perf_counter() - seconds_so_far, limit
        return run_pass(scoring)
    with pytest.raises(OverTimeLimit):  # a quarter took ~1 s: ~4 s in all, past 1.1 x 3 s although 3 s has not passed
        run(1.0, 3.0)
    assert run(1.0, 5.0).tokens == tokens.numel() - 1  # ~4 s in all fits 5 s: it runs to the end


def test_the_prefix_limit_is_the_longest_time_that_fits_the_cap():
    caps = Caps(eval_seconds=20.0, eval_ranks=8)
    prefix = torch.zeros(1001)
    limit = prefix_limit(Runtime(device=torch.device("cpu")), caps, 0.7, prefix, split_targets=10_000)
    assert allowed_eval_seconds(1, caps, 0.7) == pytest.approx(0.7 * 20.0 * 8)  # one process: 8x the ranks' time
    assert limit == pytest.approx(0.7 * 20.0 * 8 / 10)
    assert fits_eval_cap(limit * 10 * 0.999, 1, caps, 0.7) and not fits_eval_cap(limit * 10 * 1.001, 1, caps, 0.7)


def test_the_sequential_ttt_choice_scores_no_setting_that_cannot_fit(scored):
    model, evaluation, tokens, luts = scored
    config = small_config(eval=dict(autocast=False, batch_tokens=512, seq_len=128))
    data = DataPaths(TRAIN_PATTERN, VAL_PATTERN, TOKENIZER, 1024)
    space = AllocationSpace(ttt_chunk=[32, 64], ttt_rank=[4])
    held_out = validation_tokens(TRAIN_PATTERN, 128, 1024, 1024)
    lines = []
    chosen, measures = choose_ttt(model, config, space, Caps(eval_seconds=1e-6), data, CPU, held_out, 0.7, lines.append)
    assert chosen.ttt == "off" and measures[0].loss is not None and not measures[0].stopped  # the fallback, measured
    assert [(m.eval.ttt_chunk, m.stopped, m.loss) for m in measures[1:]] == [(64, True, None), (32, True, None)]
    assert sum("timing stopped" in line for line in lines) == 1  # chunk 64 went past the limit: chunk 32 is not timed
    assert sum("not timed: slower than one that did not fit" in line for line in lines) == 1
    # A cap everything fits: each setting timed to the end and scored on the held-out tokens.
    _, measures = choose_ttt(model, config, space, Caps(eval_seconds=1e9), data, CPU, held_out, 0.7, lambda line: None)
    assert all(not m.stopped and m.loss is not None for m in measures) and len(measures) == 3


def test_a_smaller_stride_or_ttt_chunk_is_at_least_as_slow_and_nothing_else_is(scored):
    base = dataclasses.replace(scored[1], stride=0, ttt="off")
    ttt = dataclasses.replace(base, ttt="lora", ttt_chunk=128, ttt_rank=4)
    assert at_least_as_slow(dataclasses.replace(base, stride=64), dataclasses.replace(base, stride=128))
    assert at_least_as_slow(dataclasses.replace(base, stride=64), base)  # stride 0: the chunks, the cheapest
    assert not at_least_as_slow(base, dataclasses.replace(base, stride=64))
    assert at_least_as_slow(dataclasses.replace(ttt, ttt_chunk=64), ttt) and not at_least_as_slow(ttt, dataclasses.replace(ttt, ttt_chunk=64))
    assert at_least_as_slow(dataclasses.replace(ttt, ttt_chunk=64, ttt_rank=8), ttt)  # smaller chunk, larger rank
    assert at_least_as_slow(dataclasses.replace(ttt, ttt_rank=8), ttt) and not at_least_as_slow(ttt, dataclasses.replace(ttt, ttt_rank=8))
    assert not at_least_as_slow(dataclasses.replace(ttt, ttt_chunk=64, ttt_rank=2), ttt)  # smaller chunk, smaller rank: unknown
    assert not at_least_as_slow(dataclasses.replace(ttt, ttt_lr=0.1, ttt_chunk=64), ttt)  # anything else differs: unknown
    assert not at_least_as_slow(dataclasses.replace(base, stride=64, ngram_order=2), dataclasses.replace(base, stride=128))
    settings = [dataclasses.replace(ttt, ttt_chunk=64), dataclasses.replace(base, stride=64), dataclasses.replace(ttt, ttt_rank=8), ttt, base,
                dataclasses.replace(base, stride=128), dataclasses.replace(ttt, ttt_chunk=64, ttt_rank=8)]
    ordered = cheapest_first(settings)
    assert all(not at_least_as_slow(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1:])
