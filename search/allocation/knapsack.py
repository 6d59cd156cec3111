"""Which option each unit takes: a multiple-choice knapsack (exact DP over byte buckets) minimising the summed
damage within the byte budget, the best uniform width it must beat, and the QuantConfig of a set of picks.
"""

import math

import numpy as np

from objectives.bytes import compressed_floats
from pgolf.config import QuantConfig
from pgolf.storage import TENSOR_AXES, quantize_state_dict
from search.allocation.options import Option, Unit, stored_bytes


def solve_knapsack(units: list[Unit], options: dict, budget: int, buckets: int = 4000) -> list[Option] | None:
    """One option per unit minimising summed damage with summed bytes <= budget (None if nothing fits)."""
    if budget <= 0:
        return None
    unit_bytes = budget / buckets
    best = np.full(buckets + 1, np.inf)
    best[0] = 0.0
    choices = []
    for unit in units:
        nxt = np.full(buckets + 1, np.inf)
        pick = np.full(buckets + 1, -1, dtype=np.int64)
        for i, opt in enumerate(options[unit.name]):
            cost = int(math.ceil(opt.bytes / unit_bytes))  # rounding up keeps the real sum within budget
            if cost > buckets:
                continue
            shifted = np.full(buckets + 1, np.inf)
            shifted[cost:] = best[: buckets + 1 - cost] + opt.damage
            better = shifted < nxt
            nxt[better] = shifted[better]
            pick[better] = i
        choices.append(pick)
        best = nxt
    if not np.isfinite(best).any():
        return None
    b = int(np.argmin(best))
    chosen = []
    for unit, pick in zip(reversed(units), reversed(choices)):
        opt = options[unit.name][pick[b]]
        chosen.append(opt)
        b -= int(math.ceil(opt.bytes / unit_bytes))
    return list(reversed(chosen))


# How the artifact is packed, not what it stores: the base config's choice, which a quant section built for an
# allocation keeps.
PACKING_KEYS = ("code", "row_order")


def packing(quant: QuantConfig) -> dict:
    return {key: getattr(quant, key) for key in PACKING_KEYS}


def allocation_quant(units: list[Unit], chosen: list[Option], compressor: str, level: int, base: QuantConfig | None = None,
                     rank_bits: int = 16) -> QuantConfig:
    """The QuantConfig of one pick per unit; the format tables list only units that leave the default, so
    an RTN-only allocation is the same config as before those tables existed."""
    base = base or QuantConfig()
    tables = {"bits": {"*": 8}, "clip": {"*": 0.0}, **{axis.name: {"*": axis.default} for axis in TENSOR_AXES}}
    for unit, opt in zip(units, chosen):
        tables["bits"][unit.name], tables["clip"][unit.name] = opt.bits, opt.clip
        for axis in TENSOR_AXES:
            if getattr(opt, axis.name) != axis.default:
                tables[axis.name][unit.name] = getattr(opt, axis.name)
    collection = {k: getattr(base, k) for k in ("calib_tokens", "gptq_damp", "gptq_block", "gptq_act_order")}  # of H, and GPTQ's
    return QuantConfig(**tables, keep_float_max_numel=0, compressor=compressor, level=level, **packing(base), **collection,
                       rank_bits=rank_bits if any(o.rank for o in chosen) else QuantConfig.rank_bits)


def fixed_bytes(state: dict, units: list[Unit], quant: QuantConfig) -> int:
    """Estimated bytes of the tensors no unit holds (control tensors, vectors): the same whatever the picks,
    so the knapsack's budget leaves room for them (else its first picks overshoot the cap by that much)."""
    held = {n for u in units for n in u.tensors}
    rest = quantize_state_dict({k: v for k, v in state.items() if k not in held}, quant)
    return sum(stored_bytes(e) if e.kind == "int" else compressed_floats(e.data) for e in rest)


def best_uniform(units, options, budget, space_alloc) -> list[Option] | None:
    """The hand-tuning baseline the knapsack must beat: one width and one clip multiplier for every
    matrix (the embedding at that width, or the nearest wider one it allows), the least damaging
    such setting that fits the budget."""
    best, best_damage = None, math.inf
    for bits in sorted(set(space_alloc.bits)):
        for clip in ([0.0] if bits == 16 else space_alloc.clip):
            picks = []
            for unit in units:
                widths = sorted({o.bits for o in options[unit.name]})
                width = bits if bits in widths else next((w for w in widths if w >= bits), widths[-1])
                same = [o for o in options[unit.name] if o.bits == width]
                picks.append(next((o for o in same if o.clip == clip), min(same, key=lambda o: o.mse)))
            damage = sum(o.damage for o in picks)
            if sum(o.bytes for o in picks) <= budget and damage < best_damage:
                best, best_damage = picks, damage
    return best
