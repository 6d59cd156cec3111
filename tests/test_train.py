import pytest
import torch

from pgolf.submission import Runtime, score, train_model
from pgolf.train import TrainingDiverged, lr_scale

from conftest import TOKENIZER, TRAIN_PATTERN, VAL_PATTERN, small_config

CPU = Runtime(device=torch.device("cpu"))


def test_a_few_steps_learn_and_report_validation():
    config = small_config(train=dict(iterations=12, val_every=4, warmdown_iters=4))
    reports = []

    def validate(model):
        return score(model, config.resolved_eval(), VAL_PATTERN, TOKENIZER, CPU, limit=2048).bpb

    model, result = train_model(config, TRAIN_PATTERN, CPU, validate_fn=validate, on_val=lambda s, b: reports.append((s, b)), log=lambda m: None)
    assert result.steps == 12 and result.train_tokens == 12 * 1024 and result.stopped_by == "iterations"
    assert [s for s, _ in reports] == [4, 8]
    assert reports[-1][1] < reports[0][1] < 10


def test_a_pruner_can_stop_training_from_the_callback():
    config = small_config(train=dict(iterations=50, val_every=2))

    class Pruned(Exception):
        pass

    def stop(step, bpb):
        raise Pruned

    with pytest.raises(Pruned):
        train_model(config, TRAIN_PATTERN, CPU, validate_fn=lambda m: 5.0, on_val=stop, log=lambda m: None)


def test_wallclock_cap_stops_the_run():
    config = small_config(train=dict(iterations=100_000, max_wallclock_seconds=3.0))
    _, result = train_model(config, TRAIN_PATTERN, CPU, log=lambda m: None)
    assert result.stopped_by == "wallclock" and result.steps < 100_000
    # It stops before the step that would cross the cap (only a first step slower than the cap overshoots).
    assert result.train_seconds <= 3.0 or result.steps == 1


def test_nan_loss_stops_with_a_clear_failure():
    config = small_config(train=dict(iterations=20, matrix_lr=1e30, tied_embed_lr=1e30, scalar_lr=1e30))
    with pytest.raises(TrainingDiverged, match="training loss became (nan|inf) at step"):
        train_model(config, TRAIN_PATTERN, CPU, log=lambda m: None)


def test_warmdown_reaches_zero_at_whichever_cap_comes_first():
    cfg = small_config(train=dict(iterations=100, warmdown_iters=10, max_wallclock_seconds=0.0)).train
    assert lr_scale(0, 0.0, cfg) == 1.0 and lr_scale(95, 0.0, cfg) == pytest.approx(0.5)
    cfg.max_wallclock_seconds = 10.0
    # 1 s per step so far, 5 s left: 5 steps remain, half the warmdown.
    assert lr_scale(5, 5.0, cfg) == pytest.approx(0.5)
