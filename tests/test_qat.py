import numpy as np
import pytest
import torch

import pgolf.qat
from pgolf.qat import QATForward, fake_quantize, qat_due, qat_row_steps, soft_entropy_bits
from pgolf.quant import dequantize_tensor, quantize_tensor
from pgolf.submission import Runtime, train_model

from conftest import TRAIN_PATTERN, small_config

CPU = Runtime(device=torch.device("cpu"))


def hard_entropy_bits(w: torch.Tensor, bits: int, clip_k: float) -> float:
    q, _ = quantize_tensor(w.detach(), bits, clip_k, 99.99984)
    counts = np.bincount(q.numpy().reshape(-1).astype(np.int64) + 128)
    p = counts[counts > 0] / q.numel()
    return float(-(p * np.log2(p)).sum())


@pytest.mark.parametrize("bits", [2, 5, 6, 8])
@pytest.mark.parametrize("clip_k", [4.0, 12.85])
def test_fake_quant_is_exactly_the_stored_dequantized_matrix(bits, clip_k):
    w = torch.randn(48, 200, generator=torch.Generator().manual_seed(bits)) * 0.05
    w[3, 7] = 2.0  # an outlier beyond the clip
    q, scale = quantize_tensor(w, bits, clip_k, 99.99984)
    assert torch.equal(fake_quantize(w, bits, clip_k), dequantize_tensor(q, scale, torch.float32))


def test_clip_zero_uses_the_row_max_with_the_stored_floor():
    w = torch.randn(8, 64) * 3
    w[0] *= 1e-3  # a row whose max is under 1: the stored rule floors its step at 1 / qmax
    steps = qat_row_steps(w, 6, 0.0)
    expected = (w.abs().amax(dim=1) / 31).clamp_min(1 / 31).half().float()
    assert torch.equal(steps, expected)


def test_gradient_passes_straight_through_and_the_step_has_none():
    w = (torch.randn(16, 32) * 0.1).requires_grad_()
    upstream = torch.randn(16, 32)
    (fake_quantize(w, 5, 8.0) * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)
    assert not qat_row_steps(w, 5, 8.0).requires_grad


def test_rate_gradient_lowers_the_entropy_of_the_stored_symbols():
    w = (torch.randn(64, 256, generator=torch.Generator().manual_seed(0)) * 0.05).requires_grad_()
    before_soft, before_hard = float(soft_entropy_bits(w, 5, 8.0).detach()), hard_entropy_bits(w, 5, 8.0)
    # The gradient is per weight of the matrix (~1 / (numel x step)); larger steps overshoot, since the step
    # (k x row std) follows the weights and the grid moves under them.
    opt = torch.optim.SGD([w], lr=2.0)
    for _ in range(10):
        opt.zero_grad()
        soft_entropy_bits(w, 5, 8.0).backward()
        opt.step()
    after_soft, after_hard = float(soft_entropy_bits(w, 5, 8.0).detach()), hard_entropy_bits(w, 5, 8.0)
    assert after_soft < before_soft - 0.05 and after_hard < before_hard - 0.05
    # The soft estimate tracks the order-0 entropy the compressor reaches.
    assert abs(before_soft - before_hard) < 0.15


def test_qat_starts_at_the_last_fraction_by_steps_or_by_the_wallclock_cap():
    cfg = small_config(train=dict(iterations=200, qat_fraction=0.3)).train
    assert not qat_due(139, 0.0, cfg) and qat_due(140, 0.0, cfg)
    cfg.max_wallclock_seconds = 100.0
    assert not qat_due(10, 69.0, cfg) and qat_due(10, 70.0, cfg)
    cfg.qat_fraction = 0.0
    assert not qat_due(199, 99.0, cfg)


def trained_state(**train):
    config = small_config(train=dict(iterations=4, **train))
    model, result = train_model(config, TRAIN_PATTERN, CPU, log=lambda m: None)
    return model.state_dict(), result.final_train_loss


def test_off_and_not_yet_started_qat_train_bit_identically():
    plain, plain_loss = trained_state()
    # The wrapper is in place but its phase (the last 1%) never comes in 4 steps.
    waiting, waiting_loss = trained_state(qat_fraction=0.01, rate_lambda=1.0)
    assert plain_loss == waiting_loss and all(torch.equal(plain[k], waiting[k]) for k in plain)
    active, active_loss = trained_state(qat_fraction=0.5, qat_bits=3, qat_clip=4.0)
    assert active_loss != plain_loss


def test_qat_with_a_looped_segment_quantizes_each_shared_matrix_once_per_forward(monkeypatch):
    calls = []
    real = pgolf.qat.fake_quantize
    monkeypatch.setattr(pgolf.qat, "fake_quantize", lambda w, bits, clip: calls.append(w) or real(w, bits, clip))
    config = small_config(model=dict(loop_start=0, loop_len=1, loop_repeats=3),
                          train=dict(iterations=3, qat_fraction=1.0, qat_bits=5, qat_clip=8.0, rate_lambda=0.5))
    model, result = train_model(config, TRAIN_PATTERN, CPU, log=lambda m: None)
    matrices = len(QATForward(model, 5, 8.0).names)
    assert matrices == 2 * 6 and len(calls) == 3 * matrices  # 2 blocks x (4 attention + 2 MLP), 3 steps
    assert np.isfinite(result.final_train_loss)


def test_embedding_qat_fake_quantizes_the_tied_embedding_on_its_own_grid_once_per_forward(monkeypatch):
    model, _ = train_model(small_config(train=dict(iterations=1)), TRAIN_PATTERN, CPU, log=lambda m: None)
    assert "tok_emb.weight" not in QATForward(model, 5, 8.0).names  # off by default
    wrapped = QATForward(model, 5, 8.0, embed_bits=6, embed_clip_k=12.0)
    assert wrapped.grids["tok_emb.weight"] == (6, 12.0) and wrapped.grids[wrapped.names[0]] == (5, 8.0)
    calls = []
    real = pgolf.qat.fake_quantize
    monkeypatch.setattr(pgolf.qat, "fake_quantize", lambda w, bits, clip: calls.append((w, bits)) or real(w, bits, clip))
    wrapped.active = True
    ids = torch.randint(0, model.cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = wrapped(ids[:, :-1], ids[:, 1:])
        embedding = model.tok_emb.weight
        assert sum(w is embedding for w, _ in calls) == 1  # once, whether read as the lookup or as the head
        # The same as the model with the embedding replaced by its stored (quantized, dequantized) rows.
        q, scale = quantize_tensor(embedding.float(), 6, 12.0, 99.99984)
        original = embedding.clone()
        matrices = {n: real(model.get_parameter(n), *wrapped.grids[n]) for n in wrapped.names if n != "tok_emb.weight"}
        for name, value in matrices.items():
            model.get_parameter(name).copy_(value)
        embedding.copy_(dequantize_tensor(q, scale, torch.float32).to(embedding.dtype))
        assert torch.equal(loss, model(ids[:, :-1], ids[:, 1:]))
        embedding.copy_(original)


def test_embedding_qat_changes_training_and_needs_qat_on():
    _, matrices_only = trained_state(qat_fraction=0.5, qat_bits=5, qat_clip=8.0)
    _, with_embedding = trained_state(qat_fraction=0.5, qat_bits=5, qat_clip=8.0, qat_embed_bits=3, qat_embed_clip=4.0)
    assert with_embedding != matrices_only
    from pgolf.config import ConfigError
    with pytest.raises(ConfigError, match="qat_embed_bits needs QAT"):
        small_config(train=dict(qat_embed_bits=6))
    with pytest.raises(ConfigError, match="qat_embed_bits must be 0"):
        small_config(train=dict(qat_fraction=0.3, qat_embed_bits=9))
