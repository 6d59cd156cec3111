"""One held-out pass gives every covered setting's loss (search/allocation/sweep.py): each stride that is a multiple of the
pass's and the plain chunks, with and without the n-gram tilt, as their own passes score them."""

import dataclasses
import math

import pytest
import torch

from pgolf.bpb import ByteLuts, load_tokenizer
from pgolf.model import GPT, full_precision
from pgolf.shards import validation_tokens
from pgolf.submission import Runtime, score_tokens
from search.allocation.sweep import sweep

from conftest import TOKENIZER, TRAIN_PATTERN, small_config

CPU = Runtime(device=torch.device("cpu"))


def test_each_covered_setting_scores_as_its_own_pass():
    config = small_config(eval=dict(autocast=False, batch_tokens=2048, seq_len=128))
    torch.manual_seed(0)
    model = full_precision(GPT(config.model)).eval()
    with torch.no_grad():  # an output layer that is not flat, so that every setting's loss differs
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    luts = ByteLuts(load_tokenizer(TOKENIZER, 1024), 1024)
    tokens = validation_tokens(TRAIN_PATTERN, 128, 1024, 1500)[:1400]  # not a whole number of sequences or strides
    base = dataclasses.replace(config.resolved_eval(), stride=0, ttt="off", ngram_order=0, ngram_threshold=0.3, ngram_boost=2.0)
    swept = sweep(model, dataclasses.replace(base, stride=32), tokens, luts, CPU, math.inf, tilt_orders=[2, 3])
    assert swept.covers(0) and swept.covers(32) and swept.covers(64) and not swept.covers(48)
    losses = set()
    for stride in (0, 32, 64):
        for order in (0, 2, 3):
            own = score_tokens(model, dataclasses.replace(base, stride=stride, ngram_order=order), tokens, luts, CPU).loss
            assert swept.loss(stride, order) == pytest.approx(own, abs=1e-6), (stride, order)
            losses.add(round(own, 6))
    assert len(losses) == 9  # each setting's loss differs: the test tells them apart
    # a derived stride's time: the pass's seconds per window times its windows (stride 64 runs about half of them)
    assert swept.seconds_of(32) == pytest.approx(swept.seconds) and 0.45 < swept.seconds_of(64) / swept.seconds < 0.55


def test_a_sweep_past_its_limit_is_none():
    config = small_config(eval=dict(autocast=False, seq_len=128))
    model = GPT(config.model).eval()
    luts = ByteLuts(load_tokenizer(TOKENIZER, 1024), 1024)
    tokens = validation_tokens(TRAIN_PATTERN, 128, 1024, 1024)
    assert sweep(model, dataclasses.replace(config.resolved_eval(), stride=32), tokens, luts, CPU, 1e-9) is None
