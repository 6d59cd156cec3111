"""Training-time ops with hand-written backward passes.

Each computes the same function as the model's plain composition of library ops, but in fewer full
passes over memory: on CPU, where a small model's step is bound by elementwise traffic rather than by
matmuls, autograd's op-by-op backward (and bf16 transcendental kernels) cost more than the matmuls do.
Reductions accumulate in fp32; results round to the activation dtype once, as bf16 autocast would.
Evaluation keeps the plain composition, so scores stay comparable bit for bit with the official code;
under torch.compile the plain composition is used too, since the compiler fuses it by itself.
"""

import contextlib

import torch
from torch import Tensor

FP32_EPS = torch.finfo(torch.float32).eps
_FUSED_OPS = {"enabled": True}


@contextlib.contextmanager
def fused_ops(enabled: bool):
    """Switch the training fast paths (these ops, and the CPU attention in the model) on or off."""
    previous, _FUSED_OPS["enabled"] = _FUSED_OPS["enabled"], enabled
    try:
        yield
    finally:
        _FUSED_OPS["enabled"] = previous


def fused_ops_enabled() -> bool:
    return _FUSED_OPS["enabled"]


def accumulation_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def use_fused_ops(x: Tensor) -> bool:
    """Whether the op on `x` takes its fused form: in eager training on the CPU only. Eval keeps the exact composition,
    compile fuses its own, and on a GPU they never run (written for the CPU's memory traffic: the softcapped
    cross-entropy is a Python loop over row chunks there), whether or not the compiler is in use."""
    return x.device.type == "cpu" and fused_ops_enabled() and torch.is_grad_enabled() and not torch.compiler.is_compiling()


class FusedRMSNorm(torch.autograd.Function):
    """x / rms(x) over the last axis: the norm in fp32, the scaling and its backward in x's dtype."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=accumulation_dtype(x))
        inv_rms = torch.rsqrt(norm.square_().div_(x.size(-1)).add_(FP32_EPS))
        y = x * inv_rms.to(x.dtype)
        ctx.save_for_backward(y, inv_rms)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # dx = (g - y * mean(g * y)) / rms
        y, inv_rms = ctx.saved_tensors
        mean_gy = torch.linalg.vecdot(grad, y).to(inv_rms.dtype).div_(-y.size(-1)).unsqueeze(-1)
        return torch.addcmul(grad, y, mean_gy.to(grad.dtype)).mul_(inv_rms.to(grad.dtype))


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # (x1, x2) -> (x1 cos + x2 sin, x2 cos - x1 sin), written into one output without a concatenation.
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    out = torch.empty_like(x)
    first, second = out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=first).addcmul_(x2, sin)
    torch.mul(x2, cos, out=second).addcmul_(x1, sin, value=-1)
    return out


class FusedRotary(torch.autograd.Function):
    """Rotary embedding; its backward is the rotation by the opposite angle."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad: Tensor):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, -sin), None, None


class FusedReluSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        r = torch.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (r,) = ctx.saved_tensors
        return (grad * r).mul_(2)


class SoftcapCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of softcap * tanh(x @ weight.T / softcap) against targets.

    Row chunks small enough to stay in cache go through the whole chain (logits, softmax, gradient) in
    fp32, and the gradient with respect to the pre-cap logits is kept (in x's dtype) for the two
    backward matmuls: the full fp32 logits never exist. The capped logits are bounded by `softcap`,
    so exp(logit - softcap) cannot overflow and needs no running max.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, targets: Tensor, softcap: float, chunk_rows: int = 512) -> Tensor:
        rows = x.size(0)
        grad_logits = torch.empty(rows, weight.size(0), dtype=x.dtype, device=x.device)
        accum = accumulation_dtype(x)
        total = torch.zeros((), dtype=accum, device=x.device)
        for start in range(0, rows, chunk_rows):
            end = min(start + chunk_rows, rows)
            target = targets[start:end, None]
            capped = torch.tanh(torch.mm(x[start:end], weight.t()).to(accum).div_(softcap))  # logits / softcap
            shifted_exp = capped.mul(softcap).sub_(softcap).exp_()
            sum_exp = shifted_exp.sum(-1, keepdim=True)
            # loss = log(sum exp(logit)) - logit[target], with both logits shifted by -softcap
            total += (sum_exp.log() - capped.gather(1, target).mul(softcap).sub_(softcap)).sum()
            # d loss/d pre-cap logit = (softmax - onehot) * (1 - tanh^2), averaged over rows
            dtanh = capped.square_().neg_().add_(1)
            grad = shifted_exp.mul_(dtanh).mul_(1.0 / rows).div_(sum_exp)
            grad.scatter_add_(1, target, dtanh.gather(1, target).mul_(-1.0 / rows))
            grad_logits[start:end] = grad
        ctx.save_for_backward(x, weight, grad_logits)
        return total / rows

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        x, weight, grad_logits = ctx.saved_tensors
        scale = grad_loss.to(x.dtype)  # applied to the two small results, not the (rows, vocab) gradient
        return torch.mm(grad_logits, weight).mul_(scale), torch.mm(grad_logits.t(), x).mul_(scale), None, None, None
