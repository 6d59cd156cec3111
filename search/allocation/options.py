"""A unit's storage options and what each costs: bytes (the real stored arrays, compressed as
objectives.bytes estimates them) and error (weight MSE, or the output error given H = X^T X of the layer's inputs).

A unit is what the allocation gives one choice: the embedding, attention or MLP of a layer (granularity
"layer"), of every layer ("kind"), or one matrix ("tensor"). An option is one storage format of pgolf/storage.py:
bits x clip multiplier (16 = fp16), and with the study's FormatChoices the quantizer (rtn | gptq), the AWQ
exponent, the protected-outlier fraction and the low-rank correction rank.
"""

import concurrent.futures
import dataclasses
import itertools
import os
from dataclasses import dataclass

import numpy as np
import torch

from objectives.bytes import RTN_PERCENTILE, compressed_floats, compressed_symbols, rtn_sizes
from pgolf.artifact import EXTRA_ROLES, byte_shuffle
from pgolf.model import tensor_role
from pgolf.quant import StoredTensor, quantize_tensor
from pgolf.storage import (FORMAT_AXES, TENSOR_AXES, MatrixFormat, attach_correction, factors_from_basis, input_rms, low_rank_basis, restore_matrix,
                           store_matrix)

PERCENTILE = RTN_PERCENTILE
FORMAT_ENTRY_BYTES = 30  # compressed directory bytes of a matrix's format fields, measured on real files
ARRAY_ENTRY_BYTES = 12  # and of each extra array's descriptor


@dataclass
class Unit:
    name: str  # glob pattern over tensor names, as written into the config's quant tables
    tensors: list  # tensor names
    embedding: bool = False


@dataclass
class Option:
    bits: int
    clip: float
    bytes: int
    mse: float  # the unit's error at this option: weight MSE, or with the layers' H the output error
    damage: float = 0.0
    # One field per per-tensor axis of pgolf/storage.py's FORMAT_AXES, with its default.
    quantizer: str = "rtn"
    awq: float = 0.0
    outliers: float = 0.0
    rank: int = 0

    @property
    def plain(self) -> bool:
        return all(getattr(self, axis.name) == axis.default for axis in TENSOR_AXES)

    def format_label(self) -> str:
        """The formats beyond plain RTN, e.g. "gptq+out0.005+r4" ("" when plain)."""
        return "+".join(axis.label(getattr(self, axis.name)) for axis in TENSOR_AXES if getattr(self, axis.name) != axis.default)


def make_units(state: dict, granularity: str) -> list[Unit]:
    """The embedding matrices one unit each; the block matrices grouped by granularity (each matrix, each
    submodule of each layer, or each submodule over every layer); any other matrix one unit of its own."""
    roles = {n: tensor_role(n) for n, t in state.items() if t.ndim == 2 and t.is_floating_point()}
    matrices = [n for n, role in roles.items() if role.kind != "gain"]
    units = [Unit(n, [n], embedding=True) for n in matrices if roles[n].kind == "embedding"]
    grouped = [n for n in matrices if roles[n].kind == "block" and roles[n].part and granularity != "tensor"]
    alone = [Unit(n, [n]) for n in matrices if roles[n].kind != "embedding" and n not in grouped]
    parts = list(dict.fromkeys(["attn", "mlp"] + [roles[n].part for n in grouped]))
    layers = ["*"] if granularity == "kind" else sorted({roles[n].block for n in grouped})
    for layer in layers:
        for part in parts:
            members = [n for n in grouped if roles[n].part == part and layer in ("*", roles[n].block)]
            if members:
                units.append(Unit(f"blocks.{layer}.{part}.*", members))
    return units + alone


def rtn_restored(t: torch.Tensor, bits: int, clip: float) -> torch.Tensor:
    """One tensor as an option stores it (bits 16: fp16), back in its own dtype."""
    if bits == 16:
        return t.detach().to(torch.float16).to(t.dtype)
    q, scale = quantize_tensor(t.detach().cpu(), bits, clip, PERCENTILE)
    return (q.float() * scale.float()[:, None]).to(t.dtype)


def unit_options(state: dict, unit: Unit, bits_options, clip_options, sizes: dict | None = None) -> list[Option]:
    """A unit's RTN options from a rtn_sizes table (measured here for its tensors when not given)."""
    sizes = sizes if sizes is not None else rtn_sizes(state, bits_options, clip_options, unit.tensors)
    options = []
    for bits in bits_options:
        for clip in ([0.0] if bits == 16 else clip_options):
            entries = [sizes[(name, bits, clip)] for name in unit.tensors]
            options.append(Option(bits, clip, sum(s + c for s, c, _ in entries), sum(e for _, _, e in entries)))
    return options


@dataclass
class FormatChoices:
    """The matrix formats a study may use beyond plain RTN (the space's [allocation] table): one field per axis
    of pgolf/storage.py's FORMAT_AXES, named by its space_key (a tuple of values, or one value when not per tensor)."""
    quantizers: tuple = ("rtn",)
    awq: tuple = (0.0,)
    outliers: tuple = (0.0,)
    ranks: tuple = (0,)
    rank_bits: int = 16

    @classmethod
    def of(cls, space_alloc) -> "FormatChoices":
        return cls(**{axis.space_key: tuple(getattr(space_alloc, axis.space_key)) if axis.per_tensor else getattr(space_alloc, axis.space_key)
                      for axis in FORMAT_AXES})

    def values(self, axis) -> tuple:
        return getattr(self, axis.space_key)

    @property
    def extended(self) -> bool:
        return any(self.values(axis) != (axis.default,) for axis in TENSOR_AXES)

    @property
    def needs_hessians(self) -> bool:
        return any(axis.calibrates(v) for axis in TENSOR_AXES for v in self.values(axis))


def stored_bytes(entry: StoredTensor) -> int:
    """Estimated compressed bytes of one stored matrix, every array it holds (as objectives.bytes does)."""
    total = compressed_symbols(entry.q.tobytes()) + compressed_floats(entry.scale)
    for arr in (entry.col_scale, entry.outlier_values, entry.lr_a_scale, entry.lr_b_scale):
        total += compressed_floats(arr) if arr is not None else 0
    if entry.outlier_gaps is not None:
        total += compressed_symbols(byte_shuffle(entry.outlier_gaps))
    for arr in (entry.lr_a, entry.lr_b):
        if arr is not None:
            total += compressed_symbols(arr.tobytes()) if arr.dtype == np.int8 else compressed_floats(arr)
    extra_arrays = sum(getattr(entry, r) is not None for r in EXTRA_ROLES)
    return total + FORMAT_ENTRY_BYTES * (extra_arrays > 0) + ARRAY_ENTRY_BYTES * extra_arrays


def output_error(delta: torch.Tensor, hessian: torch.Tensor, rows: int) -> float:
    """Mean squared output error ||X delta^T||^2 / rows, with H = X^T X over `rows` input rows."""
    d = delta.double().to(hessian.device)
    return float(torch.einsum("ij,jk,ik->", d, hessian, d)) / max(rows, 1)


def formatted_options(state: dict, unit: Unit, bits_options, clip_options, choices: FormatChoices, quant,
                      hessians: dict, rows: dict) -> list[Option]:
    """Every allowed bits x clip x format of a unit (every combination of the axes' values), its bytes and its error:
    output error on the layers' input statistics where every tensor of the unit has them, else weight MSE.
    Corrections of every rank reuse one SVD of each base format's residual."""
    with_inputs = all(n in hessians for n in unit.tensors)
    base_axes = [axis for axis in TENSOR_AXES if axis.name != "rank"]  # the correction is fitted after the rest
    names = [axis.name for axis in base_axes] + ["rank"]
    plain = tuple(axis.default for axis in base_axes)
    options: dict = {}
    # The byte estimates (zstd, which lets go of the GIL: ~45% of this function's time with every format offered) run
    # beside the quantization and SVDs; added up in the order measured, so the sums are the same.
    pending = []  # (option key, the future of its bytes, its error)
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        def measure(key: tuple, entry: StoredTensor, err: float) -> None:
            pending.append((key, pool.submit(stored_bytes, dataclasses.replace(entry)), err))  # a copy: the arrays as now

        for name in unit.tensors:
            w = state[name].detach().float().cpu()
            H, n = hessians.get(name), rows.get(name, 0)
            weight = input_rms(H, n) if H is not None else None

            def error(delta):
                return output_error(delta, H, n) if with_inputs else float(delta.pow(2).sum())

            for bits in bits_options:
                if bits == 16:
                    half = w.to(torch.float16)
                    pending.append(((16, 0.0, *plain, 0), pool.submit(compressed_floats, half.numpy()), error(w - half.float())))
                    continue
                for clip, *values in itertools.product(clip_options, *(choices.values(axis) for axis in base_axes)):
                    fmt = MatrixFormat(bits, clip, **dict(zip(names, values)))
                    if fmt.needs_calibration() and not with_inputs:
                        continue
                    entry = StoredTensor(name=name, kind="int", shape=tuple(w.shape), dtype="float32", bits=bits, clip=clip)
                    if fmt.is_plain():
                        q, scale = quantize_tensor(w, bits, clip, PERCENTILE)
                        entry.q, entry.scale = q.numpy(), scale.numpy()
                    else:
                        store_matrix(entry, w, fmt, PERCENTILE, H, n, (quant.gptq_damp, quant.gptq_block, quant.gptq_act_order))
                    residual = w - restore_matrix(entry, torch.float32)
                    measure((bits, clip, *values, 0), entry, error(residual))
                    ranks = [r for r in choices.ranks if r > 0]
                    if ranks and with_inputs:
                        basis = low_rank_basis(residual.to(weight.device), weight)
                        for rank in ranks:
                            attach_correction(entry, *factors_from_basis(basis, rank, weight), choices.rank_bits)
                            corrected = w - restore_matrix(entry, torch.float32)
                            measure((bits, clip, *values, rank), entry, error(corrected))
    for key, size, err in pending:
        _add(options, key, size.result(), err)
    return [Option(b, c, size, err, **dict(zip(names, values))) for (b, c, *values), (size, err, count) in options.items()
            if count == len(unit.tensors)]


def _add(options: dict, key: tuple, nbytes: int, err: float) -> None:
    size, total, count = options.get(key, (0, 0.0, 0))
    options[key] = (size + nbytes, total + err, count + 1)
