"""How much each unit's quantization costs the model: measured on held-out *training* tokens (never validation
tokens: the challenge forbids calibrating on them), HAWQ-style.

A unit's sensitivity is the loss increase when only that unit is stored at its cheapest plain option, per unit
of that option's error; its damage at any other option is sensitivity x that option's error (options.py).
"""

import math

import torch

from pgolf.evaluate import NonFiniteScore
from pgolf.model import GPT
from pgolf.shards import TokenStream, token_count
from search.allocation.options import rtn_restored


def calibration_tokens(train_pattern: str, vocab_size: int, count: int, seq_len: int) -> torch.Tensor:
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


@torch.no_grad()
def measure_sensitivities(model: GPT, state: dict, units: list, options: dict, tokens: torch.Tensor, seq_len: int, repeats: int,
                          autocast: bool, device) -> dict:
    """unit name -> sensitivity, and every option's `damage` set from it. The model's weights are `state` again
    on return (each unit is restored before the next is quantized)."""
    base_loss = mean_loss(model, tokens, seq_len, repeats, autocast, device)
    params = dict(model.named_parameters())
    sensitivities = {}
    for unit in units:
        reference = min((o for o in options[unit.name] if o.bits != 16 and o.plain), key=lambda o: (o.bits, o.mse), default=None)
        if reference is None or reference.mse == 0:
            sensitivities[unit.name] = 0.0
            continue
        for name in unit.tensors:
            params[name].copy_(rtn_restored(state[name], reference.bits, reference.clip))
        damage = mean_loss(model, tokens, seq_len, repeats, autocast, device) - base_loss
        for name in unit.tensors:
            params[name].copy_(state[name])
        sensitivities[unit.name] = max(damage, 0.0) / reference.mse
        for opt in options[unit.name]:
            opt.damage = sensitivities[unit.name] * opt.mse
    return sensitivities
