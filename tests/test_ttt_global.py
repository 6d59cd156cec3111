"""Phased global TTT (pgolf/ttt.py, eval.ttt_global_tokens): the prefix's documents are scored before the weights
adapt on them, later documents are scored on the adapted weights, every target once, and the model is restored."""

import dataclasses

import pytest
import torch

from pgolf.config import ConfigError, RunConfig, eval_settings, validate
from pgolf.evaluate import Trace
from pgolf.model import GPT, full_precision
from pgolf.shards import validation_tokens
from pgolf.submission import Runtime, score_tokens

from conftest import VAL_PATTERN, small_config, sample_luts

CPU = Runtime(device=torch.device("cpu"))


def fresh():
    config = small_config(eval=dict(autocast=False, batch_tokens=1024))
    torch.manual_seed(0)
    return full_precision(GPT(config.model)), config.resolved_eval()


def losses(settings, tokens):
    model, _ = fresh()  # a fresh model per pass: a TTT pass leaves it restored, but start each alike
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trace = Trace(tokens.numel() - 1)
    result = score_tokens(model, settings, tokens, sample_luts(), CPU, trace)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights restored
    assert trace.count.eq(1).all()  # every target scored once
    return result, trace.nll


def test_the_prefix_is_scored_first_and_later_documents_on_the_adapted_weights():
    _, base = fresh()
    tokens = validation_tokens(VAL_PATTERN, 128, 1024, 3072)
    starts = (tokens[:-1] == 1).nonzero().flatten().tolist()
    assert len(starts) >= 3, "the sample needs a few documents"
    prefix_end = starts[2]  # the first two documents form the prefix
    per_doc = dataclasses.replace(base, seq_len=128, ttt="lora", ttt_chunk=64, ttt_lr=0.05)
    # (this untrained model's output projections start at zero: the defaults c_q and c_v would get no gradient)
    phased = dataclasses.replace(per_doc, ttt_global_tokens=prefix_end, ttt_global_steps=2, ttt_global_targets=["*.proj.weight"])
    plain, plain_nll = losses(per_doc, tokens)
    result, nll = losses(phased, tokens)
    # The prefix is scored exactly as without the global phase; what follows is scored on the adapted weights.
    assert torch.equal(nll[:prefix_end], plain_nll[:prefix_end])
    assert not torch.equal(nll[prefix_end:], plain_nll[prefix_end:]) and result.loss != plain.loss
    # Score first: text after p changes no loss before p, whether p lies in the prefix or after it.
    for p in (prefix_end // 2, prefix_end + 100):
        changed = tokens.clone()
        changed[p:] = torch.randint(2, 1024, (tokens.numel() - p,), generator=torch.Generator().manual_seed(p))
        _, moved = losses(phased, changed)
        assert torch.allclose(moved[: p - 1], nll[: p - 1], atol=1e-5, rtol=0)


def test_its_keys_are_recorded_only_when_on_and_checked():
    config = RunConfig()
    config.eval.ttt = "lora"
    assert not any(k.startswith("ttt_global") for k in eval_settings(config.eval))
    config.eval.ttt_global_tokens = 4096
    assert eval_settings(config.eval)["ttt_global_tokens"] == 4096
    validate(config)
    for key, value in (("ttt_reset", "never"), ("ttt_global_targets", []), ("ttt_global_steps", 0)):
        bad = dataclasses.replace(config, eval=dataclasses.replace(config.eval, **{key: value}))
        with pytest.raises(ConfigError, match="ttt_global"):
            validate(bad)
