"""The token n-gram tilt (pgolf/ngram.py): its predictions equal a brute-force reading of the rule, read only the
text already scored, and the scored loss is the tilted distribution's, in every eval mode; off, nothing changes."""

import dataclasses

import numpy as np
import pytest
import torch

from pgolf.bpb import ByteLuts, load_tokenizer
from pgolf.config import ConfigError, RunConfig, eval_settings, validate
from pgolf.evaluate import Trace
from pgolf.model import GPT, full_precision
from pgolf.ngram import ngram_predictions
from pgolf.shards import validation_tokens
from pgolf.submission import Runtime, score_tokens

from conftest import TOKENIZER, VAL_PATTERN, small_config


def brute_force(tokens: list[int], order: int, threshold: float) -> tuple[list[int], list[bool]]:
    """The rule as the module states it, one target at a time."""
    pred, confident = [0] * (len(tokens) - 1), [False] * (len(tokens) - 1)
    for t in range(order - 1, len(tokens) - 1):
        context = tokens[t - order + 1 : t + 1]
        earlier = [j for j in range(order - 1, t) if tokens[j - order + 1 : j + 1] == context]
        if earlier:
            guess = tokens[earlier[-1] + 1]
            pred[t] = guess
            confident[t] = sum(tokens[j + 1] == guess for j in earlier) / (len(earlier) + 1) > threshold
    return pred, confident


def test_predictions_follow_the_rule_and_read_only_the_scored_text():
    rng = np.random.default_rng(0)
    for _ in range(40):
        tokens = rng.integers(0, int(rng.integers(2, 5)), int(rng.integers(2, 200))).tolist()
        order, threshold = int(rng.integers(1, 4)), float(rng.choice([0.3, 0.5, 0.6]))
        pred, confident = ngram_predictions(torch.tensor(tokens), order, threshold)
        want_pred, want_confident = brute_force(tokens, order, threshold)
        assert confident.tolist() == want_confident
        assert [p for p, c in zip(pred.tolist(), want_confident) if c] == [p for p, c in zip(want_pred, want_confident) if c]
        # Causal: a change from position p on leaves every prediction for targets before p (tokens <= p - 1) alone.
        p = int(rng.integers(1, len(tokens)))
        changed = tokens[:p] + rng.integers(0, 5, len(tokens) - p).tolist()
        pred2, confident2 = ngram_predictions(torch.tensor(changed), order, threshold)
        assert pred2[: p - 1].tolist() == pred[: p - 1].tolist() and confident2[: p - 1].tolist() == confident[: p - 1].tolist()


@pytest.fixture
def scored():
    config = small_config(eval=dict(autocast=False, batch_tokens=512))
    torch.manual_seed(0)
    model = full_precision(GPT(config.model))
    luts = ByteLuts(load_tokenizer(TOKENIZER, 1024), 1024)
    tokens = validation_tokens(VAL_PATTERN, 128, 1024, 4096)
    return model, config.resolved_eval(), tokens, luts


@pytest.mark.parametrize("stride", [0, 32])
def test_the_score_is_the_tilted_distributions_loss(scored, stride):
    model, settings, tokens, luts = scored
    settings = dataclasses.replace(settings, seq_len=128, stride=stride)
    tilt = dataclasses.replace(settings, ngram_order=2, ngram_threshold=0.3, ngram_boost=3.0)
    cpu = Runtime(device=torch.device("cpu"))
    positions = list(range(0, tokens.numel() - 1, 97))
    plain_trace, trace = Trace(tokens.numel() - 1, positions), Trace(tokens.numel() - 1, positions)
    plain = score_tokens(model, settings, tokens, luts, cpu, plain_trace)
    tilted = score_tokens(model, tilt, tokens, luts, cpu, trace)
    pred, confident = ngram_predictions(tokens, 2, 0.3)
    assert 0.01 < confident.float().mean() < 0.9 and tilted.loss < plain.loss
    # The recorded distribution is the model's with the predicted token's logit raised where the tilt fires (else
    # the model's own); it sums to one and holds the scored token's loss.
    fired = 0
    for t in positions:
        boost = torch.zeros(1024, dtype=torch.float64)
        boost[pred[t]] = 3.0 if confident[t] else 0.0
        want = -torch.log_softmax(-plain_trace.dist[t] + boost, 0)
        assert torch.allclose(trace.dist[t], want, atol=1e-5)
        assert abs(torch.logsumexp(-trace.dist[t], 0).item()) < 1e-5
        assert abs(trace.dist[t][tokens[t + 1]].item() - trace.nll[t].item()) < 1e-5
        fired += bool(confident[t])
    assert fired >= 2
    assert trace.count.eq(1).all()  # every target scored once


def test_off_the_tilt_changes_no_recorded_key_and_bad_settings_are_refused():
    config = RunConfig()
    assert not any(k.startswith("ngram") for k in eval_settings(config.eval))
    config.eval.ngram_order = 16
    assert eval_settings(config.eval)["ngram_order"] == 16
    for key, value in (("ngram_order", -1), ("ngram_order", 65), ("ngram_threshold", 1.0), ("ngram_boost", float("nan"))):
        bad = RunConfig()
        bad.eval.ngram_order = 4
        setattr(bad.eval, key, value)
        with pytest.raises(ConfigError, match=key):
            validate(bad)
