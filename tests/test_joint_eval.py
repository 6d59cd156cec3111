"""The joint choice of the evaluation settings (search/allocation/joint.py): every combination of the pieces the space
allows is a candidate, predicted from the pieces measured alone, and the best predicted gain that fits the eval cap
wins; a cap nothing fits leaves the plain score, each piece's timing stopped as soon as it cannot fit."""

import pytest
import torch

from pgolf.datasets import DataPaths
from pgolf.model import GPT, full_precision
from pgolf.shards import validation_tokens
from pgolf.submission import Runtime
from search.allocation import joint
from search.allocation.evaluation import choose_repeats
from search.allocation.joint import HELD_OUT, MIN_GAIN, PREFIX, choose_jointly
from search.allocation.sweep import setting_windows
from space.core import AllocationSpace, Caps, SpaceError
from space.spec import space_from_dict

from conftest import TOKENIZER, TRAIN_PATTERN, VAL_PATTERN, small_config

DATA = DataPaths(TRAIN_PATTERN, VAL_PATTERN, TOKENIZER, 1024)
PREDICTED = f"{HELD_OUT}, predicted from the plain pass"  # a stride not run, its windows at the unroll choice's pace


@pytest.fixture(scope="module")
def trained():
    config = small_config(eval=dict(autocast=False, batch_tokens=2048, seq_len=128))
    torch.manual_seed(0)
    model = full_precision(GPT(config.model)).eval()
    held_out = validation_tokens(TRAIN_PATTERN, 128, 1024, 1024)  # held-out training text
    return model, config, held_out


def plain_seconds(model, config, held_out) -> float:
    """The plain chunked pass over held_out, timed as the allocation's unroll choice times it."""
    return choose_repeats(model, config, AllocationSpace(), held_out.long(), False, torch.device("cpu"))[1]


def test_every_combination_is_a_candidate_and_the_best_fitting_prediction_wins(trained, monkeypatch):
    model, config, held_out = trained
    space = AllocationSpace(eval_stride=[0, 64], ttt_chunk=[64], ngram_order=[2], eval_choice="joint")
    cpu = Runtime(device=torch.device("cpu"))
    # Untrained, the model gains nothing from a longer context: stride 64's gain is below the floor, in no candidate.
    lines = []
    floored = choose_jointly(model, config, space, Caps(eval_seconds=1e9), DATA, cpu, held_out, plain_seconds(model, config, held_out), 0.7, lines.append, 512)
    assert next(p for p in floored.pieces if p.family == "stride").gain < MIN_GAIN
    assert sum("below the 0.0001-nat floor: no candidate" in line for line in lines) == 1
    assert {p.label for c in floored.combinations for p in c.pieces} == {"TTT lora chunk 64 rank 8", "tilt order 2"}
    monkeypatch.setattr(joint, "MIN_GAIN", -1.0)  # every measured piece a candidate, for the rules below
    choice = choose_jointly(model, config, space, Caps(eval_seconds=1e9), DATA, cpu, held_out, plain_seconds(model, config, held_out), 0.7, lambda line: None, 512)
    assert sorted(p.label for p in choice.pieces) == ["TTT lora chunk 64 rank 8", "stride 64", "tilt order 2"]
    # strides and the tilt are timed by their held-out run itself; TTT, whose pace depends on the documents, on validation
    assert {p.family: p.timed_on for p in choice.pieces} == {"stride": HELD_OUT, "tilt": HELD_OUT, "ttt": PREFIX}
    # 2 strides x (no TTT, TTT) x 2 tilts, less stride 64 with TTT at chunk 64 (the stride changes nothing there)
    assert len(choice.combinations) == 6 and all(c.fits for c in choice.combinations)
    assert not any({"stride 64", "TTT lora chunk 64 rank 8"} <= {p.label for p in c.pieces} for c in choice.combinations)
    winner = next(c for c in choice.combinations if c.chosen)
    assert winner.predicted_gain == max(c.predicted_gain for c in choice.combinations)
    for c in choice.combinations:  # predicted from the pieces: gains add, time ratios multiply
        assert c.predicted_gain == pytest.approx(sum(p.gain for p in c.pieces))
    evaluation = choice.evaluation
    assert (evaluation.stride == 64) == any(p.family == "stride" for p in winner.pieces)
    assert (evaluation.ngram_order == 2) == any(p.family == "tilt" for p in winner.pieces)
    assert winner.measured_gain is not None and "candidates" in choice.record()
    # A cap that nothing fits: every piece's timing stops at once, none is scored on the held-out tokens, and the
    # plain chunked score is the one candidate, TTT and tilt off.
    lines = []
    # TTT at chunk 64 is slower than at chunk 128 (same rank), which went past the limit: it is not even timed.
    tight = choose_jointly(model, config, AllocationSpace(eval_stride=[0, 64], ttt_chunk=[64, 128], ngram_order=[2], eval_choice="joint"),
                           Caps(eval_seconds=1e-6), DATA, cpu, held_out, plain_seconds(model, config, held_out), 0.7, lines.append, 512)
    assert all(p.stopped and p.gain is None for p in tight.pieces) and len(tight.pieces) == 4
    # the stride, predicted too slow from the plain pass, is not run either
    assert [p.label for p in tight.pieces if not p.timed] == ["stride 64", "TTT lora chunk 64 rank 8"]
    assert [c.pieces for c in tight.combinations] == [()] and tight.evaluation.stride == 0
    assert tight.evaluation.ttt == "off" and tight.evaluation.ngram_order == 0
    assert sum("too slow to fit the eval cap alone" in line and "stopped" in line for line in lines) == 2
    assert sum("stride 64: too slow" in line and "predicted from the plain pass, not timed" in line for line in lines) == 1
    assert sum("not timed: slower than a setting that did not fit" in line for line in lines) == 1
    assert all(piece["stopped_over_cap"] and piece["held_out_gain"] is None for piece in tight.record()["pieces"])


def test_strides_and_the_tilt_are_read_off_one_held_out_pass_and_a_tilt_under_the_floor_is_not_timed(trained, monkeypatch):
    model, config, held_out = trained
    space = AllocationSpace(eval_stride=[0, 32, 64], ngram_order=[2], eval_choice="joint")
    passes = []
    real = joint.sweep
    monkeypatch.setattr(joint, "sweep", lambda *args, **kwargs: passes.append(args[1].stride) or real(*args, **kwargs))
    monkeypatch.setattr(joint, "MIN_GAIN", 10.0)  # no piece gains that much: none is a candidate
    lines = []
    choice = choose_jointly(model, config, space, Caps(eval_seconds=1e9), DATA, Runtime(device=torch.device("cpu")), held_out,
                            plain_seconds(model, config, held_out), 0.7, lines.append, 512)
    assert passes == [64, 32]  # the chunks are stride 64's windows; stride 32, predicted to fit from them, has its own
    timed_on = {p.label: p.timed_on for p in choice.pieces}
    assert timed_on == {"stride 32": HELD_OUT, "stride 64": HELD_OUT, "tilt order 2": HELD_OUT}
    tilt = next(p for p in choice.pieces if p.family == "tilt")
    assert tilt.gain is not None and not tilt.timed and tilt.time_ratio is None
    assert sum("tilt order 2: held-out gain" in line and "not timed, no candidate" in line for line in lines) == 1
    stride = {p.label: p.time_ratio for p in choice.pieces if p.family == "stride"}
    # each stride timed by its own pass: half the windows take less time (the ratio itself, ~0.5 on an idle machine,
    # is wall-clock and read 0.70 on a busy CI runner, so only the order is asserted)
    assert 0 < stride["stride 64"] < stride["stride 32"]
    assert [c.pieces for c in choice.combinations] == [()]
    # A stride whose sweep is stopped leaves every smaller stride unswept (at least as slow): the chunks are swept.
    passes.clear()
    monkeypatch.setattr(joint, "sweep", lambda *args, **kwargs: passes.append(args[1].stride) or (None if args[1].stride == 64 else real(*args, **kwargs)))
    lines.clear()
    choice = choose_jointly(model, config, space, Caps(eval_seconds=1e9), DATA, Runtime(device=torch.device("cpu")), held_out,
                            plain_seconds(model, config, held_out), 0.7, lines.append, 512)
    assert passes == [64, 0]
    small = next(p for p in choice.pieces if p.label == "stride 32")
    assert small.stopped and not small.timed and small.gain is None
    assert sum("stride 32: too slow" in line and "not timed: slower than a setting that did not fit" in line for line in lines) == 1
    # A stride whose windows, at the plain pass's pace, cannot fit is not swept at all: the chunks are.
    passes.clear()
    monkeypatch.setattr(joint, "sweep", lambda *args, **kwargs: passes.append(args[1].stride) or real(*args, **kwargs))
    monkeypatch.setattr(joint, "PACE_SLACK", 1e-12)  # every prediction past the limit
    lines.clear()
    choice = choose_jointly(model, config, space, Caps(eval_seconds=1e9), DATA, Runtime(device=torch.device("cpu")), held_out,
                            plain_seconds(model, config, held_out), 0.7, lines.append, 512)
    assert passes == [0]
    small, large = (next(p for p in choice.pieces if p.label == label) for label in ("stride 32", "stride 64"))
    assert all(p.stopped and not p.timed and p.gain is None and p.timed_on == PREDICTED for p in (small, large))
    windows = {s: len(setting_windows(held_out.numel() - 1, 128, s)) for s in (32, 64)}  # about twice as many at 32
    assert small.time_ratio / large.time_ratio == pytest.approx(windows[32] / windows[64])  # the windows, at one pace
    assert sum("stride 32: too slow" in line and "predicted from the plain pass, not timed" in line for line in lines) == 1
    # A plain pass that lets every stride in (0 s here): stride 32 is still predicted from the windows stride 64 swept.
    passes.clear()
    lines.clear()
    choice = choose_jointly(model, config, space, Caps(eval_seconds=1e9), DATA, Runtime(device=torch.device("cpu")), held_out,
                            0.0, 0.7, lines.append, 512)
    assert passes == [64]
    small, large = (next(p for p in choice.pieces if p.label == label) for label in ("stride 32", "stride 64"))
    assert small.stopped and not small.timed and small.timed_on == f"{HELD_OUT}, predicted from stride 64's windows"
    assert large.timed and large.gain is not None
    assert small.time_ratio / large.time_ratio == pytest.approx(windows[32] / windows[64])  # stride 64's pass's pace
    assert sum("stride 32: too slow" in line and "predicted from stride 64's windows, not timed" in line for line in lines) == 1


def test_the_space_names_the_choice_and_the_tilt_needs_the_joint_one():
    base = {"name": "t", "run": {"base": "tiny"}, "dims": {"model.model_dim": {"choices": [32, 48]}}}
    with pytest.raises(SpaceError, match="eval_choice must be one of"):
        space_from_dict({**base, "allocation": {"eval_choice": "greedy"}})
    with pytest.raises(SpaceError, match="needs allocation.eval_choice"):
        space_from_dict({**base, "allocation": {"ngram_order": [16]}})
    with pytest.raises(SpaceError, match="ngram_order must list"):
        space_from_dict({**base, "allocation": {"ngram_order": [-1], "eval_choice": "joint"}})
    assert space_from_dict({**base, "allocation": {"ngram_order": [0, 16], "eval_choice": "joint"}}).allocation.ngram_order == [0, 16]


def test_the_report_page_tables_every_piece_and_candidate(trained):
    from search.outputs.report import evaluation_choice_tables

    model, config, held_out = trained
    space = AllocationSpace(eval_stride=[0, 32, 64], ngram_order=[2], eval_choice="joint")
    choice = choose_jointly(model, config, space, Caps(eval_seconds=1e9), DATA, Runtime(device=torch.device("cpu")), held_out,
                            plain_seconds(model, config, held_out), 0.7, lambda line: None, 512)
    page = evaluation_choice_tables(choice.record())
    assert all(p.label in page for p in choice.pieces) and all(c.label() in page for c in choice.combinations)
    assert page.count("<tr>") == 2 + len(choice.pieces) + len(choice.combinations)  # a header row per table
    with pytest.raises((KeyError, TypeError)):  # a changed record: best_trial_sections refuses it in one line
        evaluation_choice_tables({"pieces": [{"setting": "stride 64"}]})
