"""The record-proven [train] options: EMA weights, a context-length schedule, an lr floor, Polar Express Muon."""

import math

import pytest
import torch

from pgolf.artifact import unpack
from pgolf.assemble import assemble_script
from pgolf.checkpoint import checkpoint_bytes
from pgolf.config import ConfigError, config_to_dict
from pgolf.datasets import DataPaths
from pgolf.fused import fused_ops
from pgolf.model import GPT
from pgolf.optim import newton_schulz5
from pgolf.run import run
from pgolf.shards import BatchLoader
from pgolf.storage import dequantize_state_dict
from pgolf.submission import Runtime, export_trained, load_model, train_model
from pgolf.train import batch_plan, lr_scale, seq_stage, train

from conftest import TOKENIZER, TRAIN_PATTERN, VAL_PATTERN, small_config

CPU = Runtime(device=torch.device("cpu"))
DATA = DataPaths(TRAIN_PATTERN, VAL_PATTERN, TOKENIZER, 1024)


def quiet(message):
    pass


# ---- Muon's Newton-Schulz coefficients

def todays_newton_schulz5(G, steps, fused, eps=1e-7):
    """The iteration as it was before muon_ns existed (both fused-ops branches)."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.bfloat16()
    X = X / (X.flatten(1).norm(dim=1)[:, None, None] + eps)
    transposed = G.size(1) > G.size(2)
    if transposed:
        X = X.transpose(1, 2)
    for _ in range(steps):
        A = X @ X.transpose(1, 2)
        if fused:
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)
            X = torch.baddbmm(X, B, X, beta=a)
        else:
            B = b * A + c * (A @ A)
            X = a * X + B @ X
    return X.transpose(1, 2) if transposed else X


@pytest.mark.parametrize("fused", [True, False])
def test_quintic_is_todays_iteration_and_polar_express_orthogonalises(fused):
    G = torch.randn(3, 96, 256, generator=torch.Generator().manual_seed(0))
    tall = G.transpose(1, 2).contiguous()
    with fused_ops(fused):
        for g in (G, tall):
            assert torch.equal(newton_schulz5(g, 5), todays_newton_schulz5(g, 5, fused))

        def spread(ns: str, g) -> float:  # the worst distance of a singular value from 1
            return float((torch.linalg.svdvals(newton_schulz5(g, 5, ns=ns).float()) - 1).abs().max())

        for g in (G, tall):
            polar, quintic = spread("polar_express", g), spread("quintic", g)
            assert polar < 0.2 and polar < quintic
        # Beyond the table's 5 rows its last one repeats, and the result stays orthogonal.
        assert float((torch.linalg.svdvals(newton_schulz5(G, 7, ns="polar_express").float()) - 1).abs().max()) < 0.2


# ---- lr floor

def test_lr_floor_holds_the_warmdown_only():
    cfg = small_config(train=dict(iterations=100, warmdown_iters=50, lr_warmup_steps=10)).train
    plain = [lr_scale(s, 0.0, cfg) for s in range(100)]
    cfg.lr_floor = 0.2
    floored = [lr_scale(s, 0.0, cfg) for s in range(100)]
    assert floored[:10] == plain[:10] and floored[0] < 0.2  # the warmup ramp is not lifted
    assert floored[10:] == [max(p, 0.2) for p in plain[10:]] and floored[-1] == 0.2 and plain[-1] < 0.2
    # Timed by the wallclock cap as the warmdown is: 1 s a step, 1 s left of 100 s.
    cfg.max_wallclock_seconds = 100.0
    assert lr_scale(99, 99.0, cfg) == 0.2 and lr_scale(40, 40.0, cfg) == 1.0


# ---- context schedule

class RecordingLoader(BatchLoader):
    """The real loader, noting the (tokens, seq_len) of every batch it cuts."""

    def __init__(self, *args):
        super().__init__(*args)
        self.calls = []

    def next_batch(self, tokens, seq_len, spans=1):
        x, y = super().next_batch(tokens, seq_len, spans)
        self.calls.append((x.numel(), x.size(1)))
        return x, y


def test_seq_len_stages_switch_at_equal_shares_and_keep_tokens_per_step():
    config = small_config(train=dict(iterations=6, seq_len_stages=[16, 32], warmup_steps=3))
    torch.manual_seed(config.train.seed)
    model = GPT(config.model)
    loader = RecordingLoader(TRAIN_PATTERN, 1024, 0, 1, torch.device("cpu"))
    lines = []
    result = train(model, config.train, loader, torch.device("cpu"), log=lines.append)
    assert [line for line in lines if "seq_len" in line] == ["step 0/6 seq_len 16 (stage 1/3)", "step 2/6 seq_len 32 (stage 2/3)",
                                                            "step 4/6 seq_len 64 (stage 3/3)"]
    # Warmup primes each length (the final one last), then thirds of the run; 1024 tokens every step.
    assert [s for _, s in loader.calls] == [16, 32, 64] + [16, 16, 32, 32, 64, 64]
    assert {n for n, _ in loader.calls} == {1024} and result.train_tokens == 6 * 1024


def test_seq_len_stage_is_timed_by_the_wallclock_cap_when_it_ends_the_run_first():
    cfg = small_config(train=dict(iterations=300, seq_len_stages=[16, 32], max_wallclock_seconds=90.0)).train
    assert [seq_stage(10, t, cfg) for t in (0.0, 29.9, 30.0, 59.9, 60.0, 500.0)] == [0, 0, 1, 1, 2, 2]
    assert seq_stage(200, 0.0, cfg) == 2


def test_a_rank_split_that_cuts_a_stage_sequence_is_refused():
    cfg = small_config(train=dict(batch_tokens=256, seq_len=64, data_spans=1, seq_len_stages=[128])).train
    assert batch_plan(cfg, 2)[0] == 128
    with pytest.raises(ConfigError, match="train.seq_len_stages length 128 does not divide the 64 tokens per rank"):
        batch_plan(cfg, 4)


# ---- every key refused with a bad value, in one line naming it

@pytest.mark.parametrize("key, value", [
    ("ema_decay", 1.0), ("ema_decay", -0.1), ("ema_decay", math.nan),
    ("lr_floor", -0.01), ("lr_floor", 1.5),
    ("muon_ns", "cubic"),
    ("seq_len_stages", 32), ("seq_len_stages", [48]), ("seq_len_stages", [1]), ("seq_len_stages", [2048]),
    ("seq_len_stages", ["32"]), ("seq_len_stages", [True]),
    ("seq_len_stages", [16, 16, 32, 32]),
])
def test_bad_values_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"train.{key}") as caught:
        small_config(train={key: value})
    assert "\n" not in str(caught.value)


def test_micro_batches_must_hold_whole_stage_sequences():
    # 96 tokens cut into one span of 2 x 48 or 3 x 32, but a 32-token micro-batch holds no 48-token sequence.
    with pytest.raises(ConfigError, match="train.seq_len_stages length 48"):
        small_config(train=dict(batch_tokens=96, micro_batch_tokens=32, seq_len=32, data_spans=1, seq_len_stages=[48]))
    small_config(train=dict(batch_tokens=96, seq_len=32, data_spans=1, seq_len_stages=[48]))


# ---- EMA

def test_ema_weights_are_what_is_checkpointed_and_stored():
    decay, steps = 0.5, 3
    config = small_config(train=dict(iterations=steps, ema_decay=decay, log_every=1), quant=dict(bits={"*": 16}))
    # The live weights after every step, as train_model would build and train them (the log runs after each step).
    torch.manual_seed(config.train.seed)
    model = GPT(config.model)
    live = [{k: v.float().clone() for k, v in model.state_dict().items()}]
    loader = BatchLoader(TRAIN_PATTERN, 1024, 0, 1, torch.device("cpu"))
    train(model, config.train, loader, torch.device("cpu"),
          log=lambda m: live.append({k: v.float().clone() for k, v in model.state_dict().items()}))
    assert len(live) == steps + 1
    expected = live[0]
    for weights in live[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in expected}
    # What train_model hands on is what the checkpoint (search's allocation reads it) and the model file store.
    trained, _ = train_model(config, TRAIN_PATTERN, CPU, log=quiet)
    checkpoint = load_checkpoint_bytes(checkpoint_bytes(trained, config))
    stored, _, _ = load_model(export_trained(trained, config, TRAIN_PATTERN, CPU.device)[0], CPU.device)
    moved = 0.0
    for name, tensor in checkpoint.items():
        torch.testing.assert_close(tensor, expected[name].to(tensor.dtype))
        torch.testing.assert_close(stored.state_dict()[name].float(), tensor.float(), rtol=1e-3, atol=1e-5)  # fp16
        moved = max(moved, float((tensor.float() - live[-1][name]).abs().max()))
    assert moved > 1e-3  # and they are not the live weights


def load_checkpoint_bytes(blob: bytes) -> dict:
    _, stored = unpack(blob)
    return dequantize_state_dict(stored)


def test_keys_at_neutral_values_train_bit_identically():
    plain, _ = train_model(small_config(), TRAIN_PATTERN, CPU, log=quiet)
    # One "stage" at the final length runs the schedule's code path with nothing to switch.
    off, _ = train_model(small_config(train=dict(ema_decay=0.0, seq_len_stages=[64], lr_floor=0.0, muon_ns="quintic")),
                         TRAIN_PATTERN, CPU, log=quiet)
    on, _ = train_model(small_config(train=dict(ema_decay=0.9)), TRAIN_PATTERN, CPU, log=quiet)
    assert all(torch.equal(v, off.state_dict()[k]) for k, v in plain.state_dict().items())
    assert not all(torch.equal(v, on.state_dict()[k]) for k, v in plain.state_dict().items())


# ---- everything at once

def test_every_key_on_trains_exports_and_the_script_compiles(tmp_path):
    config = small_config(train=dict(iterations=6, warmup_steps=2, ema_decay=0.8, seq_len_stages=[16, 32], lr_floor=0.1,
                                     muon_ns="polar_express", weight_decay=0.04, qat_fraction=0.34, qat_bits=6, rate_lambda=0.01,
                                     qat_embed_bits=7, qat_embed_clip=14.0, max_wallclock_seconds=600.0))
    metrics = run(config, DATA, str(tmp_path / "out"), device="cpu", echo=False)
    assert metrics.steps == 6 and math.isfinite(metrics.val_bpb_post) and metrics.val_bpb_post < 10
    log = (tmp_path / "out" / "train.log").read_text()
    assert "step 2/6 seq_len 32 (stage 2/3)" in log and "step 4/6 seq_len 64 (stage 3/3)" in log and "step 4/6 qat on: int6 clip 0 embedding int7 clip 14" in log
    script = (tmp_path / "out" / "train_gpt.py").read_text()
    assert script == assemble_script(config_to_dict(config))
    compile(script, "train_gpt.py", "exec")
