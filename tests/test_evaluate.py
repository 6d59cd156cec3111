"""The eval modes (pgolf/evaluate.py's EVAL_MODES) and the ScoringPass they record into: the settings pick one mode
of the table, a scored stretch is counted the way its mode counts it and lands in the trace at its own targets, and
processes that split the stream between them score every target exactly once, as one process does."""

import dataclasses

import pytest
import torch

from pgolf.config import EvalConfig
from pgolf.evaluate import EVAL_MODES, ScoringPass, Trace, eval_mode
from pgolf.model import GPT, full_precision
from pgolf.shards import validation_tokens
from pgolf.submission import Runtime, score_tokens

from conftest import VAL_PATTERN, small_config, sample_luts

CPU = torch.device("cpu")


def test_the_eval_settings_pick_one_mode_of_the_table():
    assert set(EVAL_MODES) == {"chunked", "windowed", "ttt"}
    assert eval_mode(EvalConfig(seq_len=256)) == "chunked"
    assert eval_mode(EvalConfig(seq_len=256, stride=256)) == "chunked"  # a stride of a whole sequence: chunks
    assert eval_mode(EvalConfig(seq_len=256, stride=64)) == "windowed"
    assert eval_mode(EvalConfig(seq_len=256, stride=64, ttt="lora")) == "ttt"


@pytest.fixture
def small():
    # Fresh for each test: TTT fails after a plain pass on the same model (that pass leaves inference tensors in it).
    config = small_config(eval=dict(autocast=False, batch_tokens=512))
    torch.manual_seed(0)
    return full_precision(GPT(config.model)), config.resolved_eval()


def test_a_stretch_is_counted_as_its_mode_counts_it_and_traced_at_its_own_targets(small):
    model, settings = small
    tokens = validation_tokens(VAL_PATTERN, 64, 1024, 64)
    x, y = tokens[:8].reshape(2, 4).long(), tokens[1:9].reshape(2, 4).long()
    nll = torch.arange(8, dtype=torch.float32).reshape(2, 4) / 8
    logits = torch.randn(8, 1024)
    whole = ScoringPass(model, tokens, sample_luts(), settings, None, Trace(64, positions=[41]))
    whole.record([10, 40], x, y, nll, logits=logits)  # all targets scored: the mean times their count
    assert float(whole.sums[0]) == float(nll.mean().double() * 8) and float(whole.sums[1]) == 8
    assert float(whole.sums[2]) == float(sample_luts().target_bytes(x.reshape(-1), y.reshape(-1)).sum())
    traced = [10, 11, 12, 13, 40, 41, 42, 43]
    assert (whole.trace.count[traced] == 1).all() and int(whole.trace.count.sum()) == 8
    assert torch.equal(whole.trace.nll[traced], nll.reshape(-1).double())
    assert torch.equal(whole.trace.dist[41], -torch.log_softmax(logits[5], -1).double())

    scored = torch.tensor([[False, False, True, True], [True, True, True, True]])
    part = ScoringPass(model, tokens, sample_luts(), settings, None, Trace(64))
    part.record([10, 40], x, y, nll, scored, logits)  # a window's last targets: their sum
    assert float(part.sums[0]) == float(nll[scored].double().sum()) and float(part.sums[1]) == 6
    assert float(part.sums[2]) == float(sample_luts().target_bytes(x[scored], y[scored]).sum())
    assert part.trace.count.nonzero().flatten().tolist() == [12, 13, 40, 41, 42, 43]
    assert torch.equal(part.trace.nll[[12, 13, 40, 41, 42, 43]], nll[scored].double())

    fused = ScoringPass(model, tokens, sample_luts(), settings)  # no trace: the mean alone will do
    fused.record([10, 40], x, y, nll.mean())
    assert torch.equal(fused.sums, whole.sums)


MODES = {"chunked": {}, "windowed": dict(stride=16), "ttt": dict(ttt="lora", ttt_chunk=64, ttt_lr=0.05)}


@pytest.mark.parametrize("mode", list(MODES))
def test_processes_that_split_the_stream_score_every_target_once_as_one_process_does(small, mode):
    model, settings = small
    settings = dataclasses.replace(settings, **MODES[mode])
    assert eval_mode(settings) == mode
    tokens = validation_tokens(VAL_PATTERN, 64, 1024, 2048)  # 4 documents: TTT gives each process one at least
    alone = Trace(tokens.numel() - 1)
    whole = score_tokens(model, settings, tokens, sample_luts(), Runtime(CPU), alone)
    traces, parts = [], []
    for rank in range(3):
        traces.append(Trace(tokens.numel() - 1))
        parts.append(score_tokens(model, settings, tokens, sample_luts(), Runtime(CPU, rank, 3), traces[-1]))
    assert (alone.count == 1).all() and torch.equal(sum(t.count for t in traces), alone.count)
    assert sum(p.tokens for p in parts) == whole.tokens == tokens.numel() - 1
    assert sum(p.bytes for p in parts) == whole.bytes
    # Each target's loss as one process scored it (up to rounding: the processes' batches hold fewer rows).
    shared = torch.stack([t.nll for t in traces]).nan_to_num(0).sum(0)
    assert torch.allclose(shared, alone.nll, rtol=0, atol=1e-5)
