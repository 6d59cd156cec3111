"""Optimizers of the baseline recipe: Muon for block matrices, Adam for embeddings and scalars.

Muon orthogonalizes each matrix update with a Newton-Schulz iteration. Matrices of the same shape are
stacked and orthogonalized in one batched pass, which is the same arithmetic per matrix but far fewer,
larger matmuls (this matters on CPU, where small matmuls run well below peak).
"""

import torch
import torch.distributed as dist
from torch import Tensor

from pgolf.fused import fused_ops_enabled
from pgolf.model import tensor_role


# Newton-Schulz schedules: the input is divided by (norm_scale x its Frobenius norm + eps), then each iteration
# applies its (a, b, c); iterations beyond a table reuse its last row.
NS_SCHEDULES = {
    "quintic": (1.0, 1e-7, ((3.4445, -4.7750, 2.0315),)),
    # Polar Express (arXiv 2505.16932), the 5-iteration schedule of modded-nanogpt and nanochat. Its first steps are
    # tuned for singular values up to 1: as nanochat does, 1.02 x the norm keeps bf16 rounding from pushing one past it.
    "polar_express": (1.02, 1e-6, ((8.156554524902461, -22.48329292557795, 15.878769915207462),
                                   (4.042929935166739, -2.808917465908714, 0.5000178451051316),
                                   (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
                                   (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
                                   (2.3465413258596377, -1.7097828382687081, 0.42323551169305323))),
}


def newton_schulz5(G: Tensor, steps: int, ns: str = "quintic") -> Tensor:
    """Approximately orthogonalize each matrix of a (batch, rows, cols) stack, in bf16."""
    norm_scale, eps, coefficients = NS_SCHEDULES[ns]
    X = G.bfloat16()
    X = X / (X.flatten(1).norm(dim=1)[:, None, None] * norm_scale + eps)
    transposed = G.size(1) > G.size(2)
    if transposed:
        X = X.transpose(1, 2)
    for i in range(steps):
        a, b, c = coefficients[min(i, len(coefficients) - 1)]
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
    def __init__(self, params, lr: float, momentum: float, backend_steps: int, weight_decay: float = 0.0, nesterov: bool = True,
                 ns: str = "quintic"):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps,
                                      weight_decay=weight_decay, nesterov=nesterov, ns=ns))

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
                    update[lo:hi] = newton_schulz5(torch.stack(grads[lo:hi]), group["backend_steps"], ns=group["ns"])
                if distributed:
                    dist.all_reduce(update, op=dist.ReduceOp.SUM)
                update *= max(1.0, shape[0] / shape[1]) ** 0.5
                for p, u in zip(params, update):
                    # Decoupled and scaled by the scheduled lr, before the update: the records' MUON_WD form.
                    if group["weight_decay"] > 0:
                        p.mul_(1.0 - group["lr"] * group["weight_decay"])
                    p.add_(u.to(p.dtype), alpha=-group["lr"])


def build_optimizers(model, cfg) -> tuple[list[torch.optim.Optimizer], Muon]:
    """The baseline's parameter split: embedding / untied head / block matrices / scalars."""
    roles = [(tensor_role(name), p) for name, p in model.named_parameters()]
    block_params = [(role, p) for role, p in roles if role.block is not None]
    matrices = [p for role, p in block_params if p.ndim == 2 and role.kind == "block"]
    scalars = [p for role, p in block_params if p.ndim < 2 or role.kind == "gain"]
    if model.skip_weights.numel() > 0:
        scalars.append(model.skip_weights)
    # The model-level gains of the record modules (SmearGate, logit rescale) are scalars too.
    scalars += [p for role, p in roles if role.kind == "gain" and role.block is None and p is not model.skip_weights]
    # Fused Adam does its arithmetic in fp32 even for the bf16 embedding, as the official run does.
    fused = next(model.parameters()).device.type in ("cpu", "cuda")

    def adam(params, lr):
        return torch.optim.Adam([{"params": params, "lr": lr, "base_lr": lr}], betas=(cfg.beta1, cfg.beta2),
                                eps=cfg.adam_eps, fused=fused)

    token_lr = cfg.tied_embed_lr if model.lm_head is None else cfg.embed_lr
    # A factored embedding's up-projection is token-side: it learns with the embedding.
    optimizers = [adam([model.tok_emb.weight] + ([model.embed_proj.weight] if model.embed_proj is not None else []), token_lr)]
    if model.lm_head is not None:
        optimizers.append(adam([model.lm_head.weight], cfg.head_lr))
    muon = Muon(matrices, lr=cfg.matrix_lr, momentum=cfg.muon_momentum, backend_steps=cfg.muon_backend_steps,
                weight_decay=cfg.weight_decay, ns=cfg.muon_ns)
    for group in muon.param_groups:
        group["base_lr"] = cfg.matrix_lr
    optimizers.append(muon)
    if scalars:
        optimizers.append(adam(scalars, cfg.scalar_lr))
    return optimizers, muon
