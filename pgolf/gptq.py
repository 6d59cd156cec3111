"""GPTQ: quantize a matrix column by column, feeding each column's rounding error forward through the
inverse Hessian of the layer's inputs, so the columns not yet quantized absorb it.

The output is the same format as round-to-nearest (`quantize_tensor` in pgolf/quant.py): int8 symbols and one
fp16 scale per row, fixed up front by the same clip rule. So a GPTQ-stored tensor loads exactly like an RTN
one; only the choice of symbols differs, and it minimises ||X W^T - X Q^T|| instead of ||W - Q||.

Calibration: H = X^T X over the inputs of each linear layer, collected with forward hooks from training
tokens only (the challenge forbids calibrating on validation). A block of a shared segment runs once per
repeat, and its hook fires each time, so its H covers every repeat.
"""

import contextlib
import fnmatch
import os

import torch
from torch import Tensor, nn

from pgolf.quant import row_scales
from pgolf.shards import TokenStream, shard_files, token_count

# 64 sequences of 1,024 tokens: for inputs up to 2,048 wide, 32+ samples per dimension, which with the
# dampening below gives a well-conditioned H; the records use 32 batches of the same order.
CALIBRATION_TOKENS = 65_536


class CalibrationError(ValueError):
    """A calibration request that cannot be met (wrong split, too few tokens); the message says which."""


@contextlib.contextmanager
def exact_fp32_matmuls():
    """fp32 matmuls in full precision, TF32 off, for the body (a decorator too). A CUDA run turns TF32 on for training;
    GPTQ's error feedback and the correction SVDs keep it off, as reference GPTQ does: their results then match the
    CPU's, on which the byte and damage predictors were calibrated."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


@exact_fp32_matmuls()
def gptq_quantize(w: Tensor, hessian: Tensor, bits: int, clip_k: float, clip_percentile: float = 99.99984,
                  damp: float = 0.01, block: int = 128, act_order: bool = True, scale: Tensor | None = None,
                  keep: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(int8 symbols, fp16 per-row scales, fp32 values kept exact) of matrix `w` (out x in) given H = X^T X
    (in x in) of its inputs.

    damp: fraction of the mean diagonal added to H (keeps the Cholesky factor finite for rarely used inputs);
    block: columns updated together (lazy batch updates); act_order: quantize the columns with the largest
    input energy first, while the most columns remain to absorb their error. scale: the stored per-row
    scales, if the caller fixed them (else the clip rule's). keep: a bool mask of weights stored exactly in
    fp16 (protected outliers): their symbol is 0, their stored value is the weight as updated by the error
    feedback so far, and they pass no error on. The third result holds those values (0 elsewhere).
    """
    qmax = float(2 ** (bits - 1) - 1)
    W = w.detach().float().to(hessian.device).clone()  # on the Hessian's device: a GPU's, in a CUDA run
    if scale is None:
        scale = row_scales(W, bits, clip_k, clip_percentile)  # the stored scale: quantize against it exactly
    H = hessian.detach().double().clone()
    dead = torch.diag(H) == 0  # inputs that were never non-zero: their weights cannot matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(H.shape[0], device=H.device)
    W, H = W[:, perm], H[perm][:, perm]
    K = keep[:, perm] if keep is not None else None
    # Upper Cholesky factor of H^-1: row i holds the error-propagation weights of column i onto the later ones.
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()
    Q, kept = torch.zeros_like(W), torch.zeros_like(W)
    s = scale[:, None].float()
    for i1 in range(0, W.shape[1], block):
        i2 = min(i1 + block, W.shape[1])
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        errors = torch.zeros_like(W1)
        for i in range(i2 - i1):
            column = W1[:, i : i + 1]
            q = torch.clamp(torch.round(column / s), -qmax, qmax)
            restored = q * s
            if K is not None:
                exact = K[:, i1 + i : i1 + i + 1]
                stored = column.half().float()
                restored, q = torch.where(exact, stored, restored), torch.where(exact, 0.0, q)
                kept[:, i1 + i : i1 + i + 1] = torch.where(exact, stored, 0.0)
            Q[:, i1 + i : i1 + i + 1] = q
            error = (column - restored) / Hinv1[i, i]
            W1[:, i:] -= error @ Hinv1[i : i + 1, i:]
            errors[:, i : i + 1] = error
        W[:, i2:] -= errors @ Hinv[i1:i2, i2:]
    inverse = torch.argsort(perm)
    return Q[:, inverse].to(torch.int8).contiguous(), scale.to(torch.float16), kept[:, inverse].contiguous()


def check_calibration(train_pattern: str, seq_len: int, tokens: int) -> int:
    """The number of calibration sequences, or CalibrationError if the request cannot be met: checked
    before training too, so a run does not fail only after its training time is spent."""
    files = shard_files(train_pattern)
    if any("_val_" in os.path.basename(f) for f in files):
        raise CalibrationError(f"calibration reads training shards only, not {train_pattern}")
    sequences = tokens // seq_len
    if sequences < 1:
        raise CalibrationError(f"calibration needs at least one sequence of {seq_len} tokens, asked for {tokens:,}")
    available = token_count(train_pattern)
    if sequences * seq_len + 1 > available:
        raise CalibrationError(f"calibration asks for {tokens:,} tokens but the training shards {train_pattern} hold {available:,}")
    return sequences


def calibration_batches(train_pattern: str, vocab_size: int, seq_len: int, tokens: int = CALIBRATION_TOKENS, batch_seqs: int = 16):
    """(x, y) batches of the first `tokens` training tokens, in stream order (deterministic: no seed needed)."""
    sequences = check_calibration(train_pattern, seq_len, tokens)
    stream = TokenStream(train_pattern, vocab_size).take(sequences * seq_len + 1)
    x, y = stream[:-1].view(sequences, seq_len), stream[1:].view(sequences, seq_len)
    for first in range(0, sequences, batch_seqs):
        yield x[first : first + batch_seqs], y[first : first + batch_seqs]


@torch.no_grad()
def collect_hessians(model: nn.Module, batches, patterns: tuple[str, ...] = ("*",), device=None) -> tuple[dict, dict]:
    """({weight name: H = X^T X in fp64}, {weight name: input rows summed into it}) for every nn.Linear whose
    weight name matches `patterns`, and for a tied embedding (as the output layer it also is: its error
    reaches the logits through the final hidden state), over `batches` of (x, y)."""
    device = device or next(model.parameters()).device
    hessians, rows, hooks = {}, {}, []
    # c_q, c_k and c_v (and parallel branches) read the same input tensor: its X^T X, the costly fp64 part,
    # is computed once and added to each of them.
    last = {"input": None, "product": None}
    tied = getattr(model, "lm_head", 1) is None and any(fnmatch.fnmatch("tok_emb.weight", p) for p in patterns)
    if tied:
        dim = model.tok_emb.weight.shape[1]
        hessians["tok_emb.weight"] = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        rows["tok_emb.weight"] = 0
    for name, module in model.named_modules():
        weight = f"{name}.weight"
        if isinstance(module, nn.Linear) and any(fnmatch.fnmatch(weight, p) for p in patterns):
            hessians[weight] = torch.zeros(module.in_features, module.in_features, dtype=torch.float64, device=device)
            rows[weight] = 0

            def accumulate(mod, args, key=weight):
                if args[0] is not last["input"]:
                    x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                    last.update(input=args[0], product=x.T @ x)
                hessians[key].add_(last["product"])
                rows[key] += args[0].numel() // args[0].shape[-1]

            hooks.append(module.register_forward_pre_hook(accumulate))
    was_training = model.training
    model.eval()
    try:
        for x, _ in batches:
            hidden = model.projection_input(x.to(device))  # runs every block (their hooks fire)
            if tied:
                h = hidden.reshape(-1, hidden.shape[-1]).double()
                hessians["tok_emb.weight"].addmm_(h.T, h)
                rows["tok_emb.weight"] += h.shape[0]
            elif model.lm_head is not None:
                model.lm_head(hidden)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
        last.clear()
    return hessians, rows
