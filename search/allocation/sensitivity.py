"""How much each unit's quantization costs the model: measured on held-out *training* tokens (never validation
tokens: the challenge forbids calibrating on them), HAWQ-style.

A unit's sensitivity is the loss increase when only that unit is stored at its cheapest plain option, per unit
of that option's error; its damage at any other option is sensitivity x that option's error (options.py).
How that loss increase is found is the one choice here (`[allocation] sensitivity`):

    forward  measured: one forward over the tokens per unit, with that unit quantized (the default)
    fisher   estimated: 1/2 sum_i F_i delta_i^2, F the diagonal Fisher from squared micro-batch gradients,
             one backward pass over the same tokens for all units (cheaper when there are many units;
             blind to the first-order term a model far from a minimum still has)
"""

import math

import torch

from pgolf.evaluate import NonFiniteScore
from pgolf.model import GPT
from pgolf.shards import TokenStream, token_count
from search.allocation.options import rtn_restored


def heldout_tokens(train_pattern: str, vocab_size: int, count: int, seq_len: int) -> torch.Tensor:
    """The last `count` tokens (whole sequences) of the training split: held out from the start of it."""
    stream = TokenStream(train_pattern, vocab_size)
    total = token_count(train_pattern)
    count = min(count, total - 1) // seq_len * seq_len
    stream.take(total - count - 1)
    return stream.take(count + 1)


@torch.no_grad()
def mean_loss(model: GPT, tokens: torch.Tensor, seq_len: int, repeats: int, autocast: bool, device) -> float:
    x = tokens[:-1].reshape(-1, seq_len).to(device)
    y = tokens[1:].reshape(-1, seq_len).to(device)
    total, count = 0.0, 0
    for start in range(0, x.size(0), 64):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(x[start : start + 64], y[start : start + 64], repeats=repeats, reduction="sum")
        total += float(loss)
        count += y[start : start + 64].numel()
    if not math.isfinite(total):  # sensitivities and unroll choice would silently compare NaNs
        raise NonFiniteScore(f"allocation: held-out training loss is {total / count}: the model's outputs are not finite")
    return total / count


FISHER_MICRO_BATCHES = 16  # squared-gradient samples per weight; the sums over a unit's weights average the rest


def diagonal_fisher(model: GPT, tokens: torch.Tensor, seq_len: int, repeats: int, autocast: bool, device, names: list) -> dict:
    """weight name -> per-token diagonal Fisher estimate: over micro-batches of n tokens, n x the mean squared
    gradient of each micro-batch's mean loss (E[g_b^2] = mean(g)^2 + F / n)."""
    x = tokens[:-1].reshape(-1, seq_len).to(device)
    y = tokens[1:].reshape(-1, seq_len).to(device)
    per = max(1, math.ceil(x.size(0) / FISHER_MICRO_BATCHES))
    params = dict(model.named_parameters())
    wanted = {name: params[name].requires_grad for name in names}
    fisher = {name: torch.zeros_like(params[name], dtype=torch.float32) for name in names}
    batches = 0
    try:
        for name in names:
            params[name].requires_grad_(True)
        with torch.enable_grad():
            for start in range(0, x.size(0), per):
                model.zero_grad(set_to_none=True)
                xb, yb = x[start : start + per], y[start : start + per]
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss = model(xb, yb, repeats=repeats, reduction="sum") / yb.numel()
                if not torch.isfinite(loss):
                    raise NonFiniteScore(f"allocation: held-out training loss is {float(loss)}: the model's outputs are not finite")
                loss.backward()
                for name in names:
                    if params[name].grad is not None:
                        fisher[name] += params[name].grad.float().square() * yb.numel()
                batches += 1
    finally:
        model.zero_grad(set_to_none=True)
        for name, flag in wanted.items():
            params[name].requires_grad_(flag)
    return {name: f / batches for name, f in fisher.items()}


def reference_option(unit_options: list):
    """The option a unit's loss increase is found at: its cheapest plain integer option."""
    return min((o for o in unit_options if o.bits != 16 and o.plain), key=lambda o: (o.bits, o.mse), default=None)


@torch.no_grad()
def measure_sensitivities(model: GPT, state: dict, units: list, options: dict, tokens: torch.Tensor, seq_len: int, repeats: int,
                          autocast: bool, device, method: str = "forward") -> dict:
    """unit name -> sensitivity, and every option's `damage` set from it. The model's weights are `state` again
    on return (each unit is restored before the next is quantized)."""
    references = {unit.name: reference_option(options[unit.name]) for unit in units}
    measured = [unit for unit in units if references[unit.name] is not None and references[unit.name].mse > 0]
    if method == "fisher":
        fisher = diagonal_fisher(model, tokens, seq_len, repeats, autocast, device, [n for u in measured for n in u.tensors])

        def loss_increase(unit, reference) -> float:
            return 0.5 * sum(float((fisher[name] * (rtn_restored(state[name], reference.bits, reference.clip).float()
                                                     - state[name].float()).square()).sum()) for name in unit.tensors)
    else:
        base_loss = mean_loss(model, tokens, seq_len, repeats, autocast, device)
        params = dict(model.named_parameters())

        def loss_increase(unit, reference) -> float:
            for name in unit.tensors:
                params[name].copy_(rtn_restored(state[name], reference.bits, reference.clip))
            damage = mean_loss(model, tokens, seq_len, repeats, autocast, device) - base_loss
            for name in unit.tensors:
                params[name].copy_(state[name])
            return damage

    sensitivities = {unit.name: 0.0 for unit in units}
    for unit in measured:
        reference = references[unit.name]
        sensitivities[unit.name] = max(loss_increase(unit, reference), 0.0) / reference.mse
        for opt in options[unit.name]:
            opt.damage = sensitivities[unit.name] * opt.mse
    return sensitivities
