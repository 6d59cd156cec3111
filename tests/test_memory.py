"""Memory that fits by default: passes no larger than the official script's per GPU, gradient accumulation that
is one pass's loss and gradients, a CUDA out-of-memory error retried once with half the micro-batch, and each
trial's peak memory recorded beside its placement."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from conftest import DATA, MICRO_SPACE, TRAIN_PATTERN, small_config
from pgolf.model import GPT
from pgolf.shards import BatchLoader
from pgolf.train import GPU_PASS_TOKENS, batch_plan, train


def test_on_a_gpu_a_pass_is_never_larger_than_the_official_scripts_unless_the_space_says_so():
    cfg = small_config(train=dict(batch_tokens=524_288, seq_len=1024, data_spans=8)).train
    assert GPU_PASS_TOKENS == 524_288 // 8
    assert batch_plan(cfg, 1, "cuda")[:2] == (65_536, 8)  # one GPU: the official script's 8 accumulation steps
    assert batch_plan(cfg, 8, "cuda")[:2] == (65_536, 1)
    assert batch_plan(cfg, 1, "cpu")[:2] == (524_288, 1)  # CPU runs keep their one pass (bit-identical)
    cfg.micro_batch_tokens = 131_072  # a space that says so
    assert batch_plan(cfg, 1, "cuda")[:2] == (131_072, 4)
    odd = small_config(train=dict(batch_tokens=3 * 2048 * 32, seq_len=2048, data_spans=1)).train
    assert batch_plan(odd, 1, "cuda")[:2] == (32 * 2048, 3)


def one_step(micro_batch_tokens: int) -> tuple[float, dict]:
    """The loss of one training step, and every parameter's gradient as the optimizers receive it."""
    config = small_config(train=dict(iterations=1, micro_batch_tokens=micro_batch_tokens, autocast=False))
    torch.manual_seed(0)
    model = GPT(config.model)
    grads = {}

    def snapshot(optimizer, args, kwargs):
        if not grads:
            grads.update({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})

    hook = register_optimizer_step_pre_hook(snapshot)
    try:
        result = train(model, config.train, BatchLoader(TRAIN_PATTERN, 1024, 0, 1, torch.device("cpu")), torch.device("cpu"),
                       log=lambda *_: None)
    finally:
        hook.remove()
    return result.final_train_loss, grads


def test_micro_batches_give_the_loss_and_gradients_of_one_pass():
    # 1,024 tokens in 8 data spans: one pass of all 8, or 4 passes of 2 spans each, read the same sequences.
    loss, grads = one_step(0)
    for micro in (512, 256):
        micro_loss, micro_grads = one_step(micro)
        assert micro_loss == pytest.approx(loss, rel=1e-6)
        assert grads.keys() == micro_grads.keys() and len(grads) > 5
        for name in grads:  # the embedding is bf16 (as in the official script): its precision bounds the agreement
            scale = grads[name].abs().max().item()
            assert (micro_grads[name] - grads[name]).abs().max().item() <= 2 ** -7 * scale, name


def test_an_out_of_memory_error_is_retried_once_with_half_the_micro_batch_and_the_peak_is_recorded(tmp_path):
    from search.memory import TEST_OOM_ENV
    from test_search import load

    space = tmp_path / "steps.toml"  # the micro space by steps, not seconds: the first report comes however busy the machine is
    with open(MICRO_SPACE, encoding="utf-8") as f:
        space.write_text(f.read().replace("train_seconds = 3.0", "train_seconds = 600.0").replace("iterations = 100000", "iterations = 4")
                         .replace("val_every_seconds = 1.0", "val_every = 2"))
    env = dict(os.environ, **{TEST_OOM_ENV: "1"})  # the first report of the first attempt raises torch.cuda.OutOfMemoryError
    result = subprocess.run([sys.executable, "-m", "search.cli", "run", "--space", str(space), "--study", "m", "--trials", "1",
                             "--results", str(tmp_path)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr + result.stdout
    trial = load(tmp_path, "m").trials[0]
    assert trial.user_attrs["stage"] == "complete"
    log = (tmp_path / "m" / "trials" / "0000" / "train.log").read_text()
    assert f"CUDA out of memory ({TEST_OOM_ENV}=1) with 1,024 tokens per pass: retrying once with 512" in log
    placement = trial.user_attrs["placement"]
    assert placement["attempts"] == 2 and placement["pass_tokens"] == 512 and placement["ranks"] == 1 and placement["threads_per_rank"] >= 1
    assert placement["peak_memory_of"] == "ru_maxrss" and 50e6 < placement["peak_memory_bytes"] < 20e9
    assert "micro_batch_tokens = 512" in (tmp_path / "m" / "trials" / "0000" / "config.toml").read_text()
