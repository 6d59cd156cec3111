"""Optimizers of the baseline recipe: Muon for block matrices, Adam for embeddings and scalars.

Muon orthogonalizes each matrix update with a Newton-Schulz iteration. Matrices of the same shape are
stacked and orthogonalized in one batched pass, which is the same arithmetic per matrix but far fewer,
larger matmuls (this matters on CPU, where small matmuls run well below peak).
"""

import torch
import torch.distributed as dist
from torch import Tensor

from pgolf.fused import fused_ops_enabled
from pgolf.model import is_control_tensor


def newton_schulz5(G: Tensor, steps: int, eps: float = 1e-7) -> Tensor:
    """Approximately orthogonalize each matrix of a (batch, rows, cols) stack, in bf16."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.bfloat16()
    X = X / (X.flatten(1).norm(dim=1)[:, None, None] + eps)
    transposed = G.size(1) > G.size(2)
    if transposed:
        X = X.transpose(1, 2)
    for _ in range(steps):
        A = X @ X.transpose(1, 2)
        if fused_ops_enabled():
            # The same polynomial with each line one batched matmul-add: fewer bf16 roundings (about
            # half the official composition's distance to the exact iteration) and half the time on CPU.
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)
            X = torch.baddbmm(X, B, X, beta=a)
        else:
            B = b * A + c * (A @ A)
            X = a * X + B @ X
    return X.transpose(1, 2) if transposed else X


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float, backend_steps: int, weight_decay: float = 0.0, nesterov: bool = True):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps,
                                      weight_decay=weight_decay, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure=None):
        distributed = dist.is_available() and dist.is_initialized()
        world_size = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            by_shape: dict[tuple, list] = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(tuple(p.shape), []).append(p)
            for shape, params in by_shape.items():
                grads = []
                for p in params:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p.grad)
                    buf = state["momentum_buffer"]
                    buf.mul_(group["momentum"]).add_(p.grad)
                    grads.append(p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf)
                # Each rank orthogonalizes a slice of the stack; the slices are summed across ranks.
                lo, hi = len(params) * rank // world_size, len(params) * (rank + 1) // world_size
                update = torch.zeros((len(params), *shape), device=params[0].device, dtype=torch.bfloat16)
                if hi > lo:
                    update[lo:hi] = newton_schulz5(torch.stack(grads[lo:hi]), group["backend_steps"])
                if distributed:
                    dist.all_reduce(update, op=dist.ReduceOp.SUM)
                update *= max(1.0, shape[0] / shape[1]) ** 0.5
                for p, u in zip(params, update):
                    if group["weight_decay"] > 0:
                        p.mul_(1.0 - group["lr"] * group["weight_decay"])
                    p.add_(u.to(p.dtype), alpha=-group["lr"])


def build_optimizers(model, cfg) -> tuple[list[torch.optim.Optimizer], Muon]:
    """The baseline's parameter split: embedding / untied head / block matrices / scalars."""
    block_params = list(model.blocks.named_parameters())
    matrices = [p for name, p in block_params if p.ndim == 2 and not is_control_tensor(name)]
    scalars = [p for name, p in block_params if p.ndim < 2 or is_control_tensor(name)]
    if model.skip_weights.numel() > 0:
        scalars.append(model.skip_weights)
    # Fused Adam does its arithmetic in fp32 even for the bf16 embedding, as the official run does.
    fused = next(model.parameters()).device.type in ("cpu", "cuda")

    def adam(params, lr):
        return torch.optim.Adam([{"params": params, "lr": lr, "base_lr": lr}], betas=(cfg.beta1, cfg.beta2),
                                eps=cfg.adam_eps, fused=fused)

    token_lr = cfg.tied_embed_lr if model.lm_head is None else cfg.embed_lr
    optimizers = [adam([model.tok_emb.weight], token_lr)]
    if model.lm_head is not None:
        optimizers.append(adam([model.lm_head.weight], cfg.head_lr))
    muon = Muon(matrices, lr=cfg.matrix_lr, momentum=cfg.muon_momentum, backend_steps=cfg.muon_backend_steps,
                weight_decay=cfg.weight_decay)
    for group in muon.param_groups:
        group["base_lr"] = cfg.matrix_lr
    optimizers.append(muon)
    if scalars:
        optimizers.append(adam(scalars, cfg.scalar_lr))
    return optimizers, muon
