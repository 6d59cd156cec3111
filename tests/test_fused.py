"""The training fast paths compute the same function and gradient as the plain composition they replace."""

import copy

import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from pgolf.config import ModelConfig
from pgolf.fused import FusedReluSquare, FusedRMSNorm, FusedRotary, SoftcapCrossEntropy, fused_ops
from pgolf.model import GPT, full_precision


def test_fused_ops_have_exact_gradients_in_float64():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    cos, sin = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    assert gradcheck(FusedRMSNorm.apply, (x,))
    assert gradcheck(lambda t: FusedRotary.apply(t, cos, sin), (x,))
    assert gradcheck(FusedReluSquare.apply, (x,))
    h = torch.randn(7, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    # chunks of 3 rows: the last chunk is partial
    assert gradcheck(lambda a, b: SoftcapCrossEntropy.apply(a, b, targets, 3.0, 3), (h, w))
    reference = F.cross_entropy(3.0 * torch.tanh(h @ w.t() / 3.0), targets)
    assert torch.allclose(SoftcapCrossEntropy.apply(h, w, targets, 3.0, 3), reference, rtol=1e-12)


def test_fused_training_gradients_are_as_close_to_float64_as_the_plain_ones():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=128, num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1))
    for p in model.parameters():  # zero-initialised projections would hide the attention and MLP paths
        torch.nn.init.normal_(p, std=0.05)
    x, y = torch.randint(0, 128, (4, 32)), torch.randint(0, 128, (4, 32))
    exact = full_precision(copy.deepcopy(model)).double()
    with fused_ops(False):
        exact(x, y).backward()

    def relative_errors(enabled: bool) -> list[float]:
        model.zero_grad()
        with fused_ops(enabled), torch.autocast("cpu", dtype=torch.bfloat16):
            model(x, y).backward()
        return [float((p.grad.double() - e.grad).norm() / e.grad.norm()) for p, e in zip(model.parameters(), exact.parameters())]

    fused, plain = relative_errors(True), relative_errors(False)
    assert max(plain) < 0.1  # bf16 noise, a few percent at most
    for f, p in zip(fused, plain):
        assert f <= 2 * p + 0.005


def test_newton_schulz_fast_path_is_closer_to_the_exact_iteration():
    from pgolf.optim import newton_schulz5

    torch.manual_seed(0)
    grads = torch.randn(3, 64, 128)
    exact = _newton_schulz_float64(grads, 5)

    def distance(enabled: bool) -> float:
        with fused_ops(enabled):
            return float((newton_schulz5(grads, 5).double() - exact).norm() / exact.norm())

    assert distance(True) < distance(False) < 0.05


def _newton_schulz_float64(grads: torch.Tensor, steps: int) -> torch.Tensor:
    a, b, c = (3.4445, -4.7750, 2.0315)
    x = grads.double()
    x = x / x.flatten(1).norm(dim=1)[:, None, None]
    for _ in range(steps):
        m = x @ x.transpose(1, 2)
        x = a * x + (b * m + c * m @ m) @ x
    return x
