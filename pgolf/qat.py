"""Quantization-aware training (QAT) and a rate term on the estimated coded size of the weights.

Over the last `qat_fraction` of training the forward pass sees every block matrix (the 2-D weights of
attention and MLP that Muon trains and the storage quantizes as integers) rounded to its stored grid:
symmetric signed integers of `qat_bits` with one step per row, the step as `pgolf/quant.py` computes it
(clip k > 0: k * row std / qmax; k = 0: row absmax / qmax, floored at 1 / qmax like the stored rule; the
stored k = 0 rule clips at a percentile of |w|, a sort per row that is too costly per step, and for rows
of under ~600k weights that percentile is the row max anyway). Gradients pass straight through.
The token-side matrices (the tied embedding/head, an untied head, a factored embedding's up-projection) are
stored at their own width (int7/int8/fp16 in the records), so they get their own keys: `qat_embed_bits`
(0 = left alone) and `qat_embed_clip`. A tied embedding is fake-quantized once and seen so both as the
input lookup and as the output head, as the stored one is used.

How it hooks in: `QATForward` wraps the model and calls it through `torch.func.functional_call` with the
fake-quantized matrices in place of the parameters. The model code is untouched, state-dict names stay
the same, each matrix is fake-quantized once per forward whichever repeat of a shared segment uses it,
and torch.compile traces it (one more graph when `active` flips). The wrapper owns no parameters of its
own, so DDP around it reduces the model's gradients as before.

Rate term: the entropy (bits per weight) of a soft histogram of w / step over the integer levels, each
weight split between its two neighbouring levels by linear interpolation. Its gradient moves each weight
towards the more populated neighbour, which is what lowers the order-0 entropy a compressor reaches.
"""

import torch
from torch import Tensor, nn
from torch.func import functional_call

from pgolf.model import tensor_role

QAT_PROGRESS_TOLERANCE = 1e-9  # so that e.g. step 140 of 200 counts as reaching 1 - 0.3


def qat_due(step: int, elapsed_s: float, cfg) -> bool:
    """Whether training progress has reached the QAT phase: progress by steps, or by the wallclock cap when
    one is set and it ends the run first (as the warmdown is timed)."""
    if cfg.qat_fraction <= 0:
        return False
    progress = step / cfg.iterations
    if cfg.max_wallclock_seconds > 0:
        progress = max(progress, elapsed_s / cfg.max_wallclock_seconds)
    return progress >= 1.0 - cfg.qat_fraction - QAT_PROGRESS_TOLERANCE


def qat_matrix_names(model: nn.Module) -> list[str]:
    """The block matrices (the ones Muon trains), as named in the model's state dict."""
    return [name for name, p in model.named_parameters() if p.ndim == 2 and tensor_role(name).kind == "block"]


def qat_embedding_names(model: nn.Module) -> list[str]:
    """The token-side matrices, as named in the model's state dict."""
    return [name for name, p in model.named_parameters() if p.ndim == 2 and tensor_role(name).kind == "embedding"]


def qat_row_steps(w: Tensor, bits: int, clip_k: float) -> Tensor:
    """Per-row quantization steps of a matrix, rounded to fp16 as stored, with no gradient."""
    qmax = float(2 ** (bits - 1) - 1)
    rows = w.detach().float()
    if clip_k > 0:
        step = (clip_k * rows.std(dim=1, correction=0) / qmax).clamp_min(1e-12)
    else:
        step = (rows.abs().amax(dim=1) / qmax).clamp_min(1.0 / qmax)
    return step.to(torch.float16).float().clamp_min(6e-8)


def fake_quantize(w: Tensor, bits: int, clip_k: float) -> Tensor:
    """w rounded to its stored per-row grid in the forward pass, the identity in the backward pass."""
    qmax = float(2 ** (bits - 1) - 1)
    step = qat_row_steps(w, bits, clip_k)[:, None]
    quantized = (torch.clamp(torch.round(w.detach().float() / step), -qmax, qmax) * step).to(w.dtype)
    # quantized + (w - w) is exactly `quantized` in the forward; w + (quantized - w).detach() could round.
    return quantized + (w - w.detach())


def soft_entropy_bits(w: Tensor, bits: int, clip_k: float) -> Tensor:
    """Order-0 entropy, in bits per weight, of a soft histogram of one matrix's symbols (differentiable in w)."""
    qmax = 2 ** (bits - 1) - 1
    step = qat_row_steps(w, bits, clip_k)[:, None]
    position = (w.float() / step).clamp(-qmax, qmax).flatten() + qmax  # in [0, 2 qmax]
    low = position.detach().floor().clamp(max=2 * qmax - 1)
    upper_share = position - low
    index = low.long()
    hist = torch.zeros(2 * qmax + 1, device=w.device, dtype=torch.float32)
    hist = hist.index_add(0, index, 1.0 - upper_share).index_add(0, index + 1, upper_share)
    p = hist / position.numel()
    return -(p * torch.log2(p.clamp_min(1e-12))).sum()


class QATForward(nn.Module):
    """The model's forward with its block matrices (and, with embed_bits, its token-side matrices)
    fake-quantized while `active` (else the model as is)."""

    def __init__(self, model: nn.Module, bits: int, clip_k: float, embed_bits: int = 0, embed_clip_k: float = 0.0):
        super().__init__()
        self.model = model
        # name -> (bits, clip) of every fake-quantized matrix
        self.grids = {name: (bits, clip_k) for name in qat_matrix_names(model)}
        if embed_bits:
            self.grids.update({name: (embed_bits, embed_clip_k) for name in qat_embedding_names(model)})
        self.names = list(self.grids)
        self.active = False

    def forward(self, input_ids: Tensor, target_ids: Tensor) -> Tensor:
        if not self.active:
            return self.model(input_ids, target_ids)
        fq = {name: fake_quantize(self.model.get_parameter(name), *grid) for name, grid in self.grids.items()}
        return functional_call(self.model, fq, (input_ids, target_ids))

    def rate_bits(self) -> Tensor:
        """Estimated coded bits per weight of the fake-quantized matrices, averaged over all their weights."""
        total, count = 0.0, 0
        for name, grid in self.grids.items():
            w = self.model.get_parameter(name)
            total = total + soft_entropy_bits(w, *grid) * w.numel()
            count += w.numel()
        return total / count
