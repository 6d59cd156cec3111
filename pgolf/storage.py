"""How each tensor is stored: the one place a matrix's storage format is decided and undone.

A block or embedding matrix is stored as a `MatrixFormat` (from the QuantConfig's glob tables, see
`matrix_format`):
- integer symbols with one fp16 scale per row, chosen by round-to-nearest ("rtn") or by GPTQ ("gptq",
  pgolf/gptq.py), at `bits` with the clip multiplier `clip` (pgolf/quant.py);
- optionally AWQ-lite: input channel j is multiplied by s_j = (rms activation of j)^awq before
  quantizing (s normalised to geometric mean 1, stored in fp16) and divided by it at load, so the
  channels the model reads most get the finest steps;
- optionally protected outliers: the `outliers` fraction of weights largest in magnitude stored exactly
  in fp16 beside the low-bit rest, their positions as gaps between sorted flat indices (uint16 when every
  gap fits, else uint32), which compress to about a byte each;
- optionally a low-rank correction: rank-`rank` factors A (out x r), B (r x in) of the remaining error
  W - W_hat, fp16 or int8 with per-row fp16 scales, added back at load (the records' LQER). The SVD
  weights input channels by their rms activation (the output error is what matters).
GPTQ, AWQ and the correction need H = X^T X of the layer's inputs over training tokens (`needs_calibration`).
Other tensors follow `tensor_plan` (pgolf/quant.py) unchanged.

A format's axes are described once, in FORMAT_AXES, which the config, the space, `search allocate`, the
allocation, the artifact and the byte predictor read; the quantizers are one registry, QUANTIZERS.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from pgolf.gptq import exact_fp32_matmuls, gptq_quantize
from pgolf.quant import StoredTensor, dequantize_tensor, pattern_value, quantize_tensor, row_scales, tensor_plan


def _rtn_symbols(w: Tensor, rest: Tensor, hessian, bits: int, clip: float, clip_percentile: float, keep, gptq):
    q, scale16 = quantize_tensor(rest, bits, clip, clip_percentile)
    return q, scale16, (w.half().float() * keep if keep is not None else None)


def _gptq_symbols(w: Tensor, rest: Tensor, hessian, bits: int, clip: float, clip_percentile: float, keep, gptq):
    damp, block, act_order = gptq
    scale = row_scales(rest, bits, clip, clip_percentile)
    return gptq_quantize(w, hessian, bits, clip, clip_percentile, damp, block, act_order, scale, keep)


@dataclass(frozen=True)
class Quantizer:
    """symbols(w, rest = w without its kept outliers, H, bits, clip, clip_percentile, keep, gptq) -> (int8 symbols,
    fp16 row scales, w's kept values as stored or None)."""
    symbols: Callable
    calibrates: bool  # needs H of the layer's inputs (collected after training, on training tokens)


QUANTIZERS = {"rtn": Quantizer(_rtn_symbols, False), "gptq": Quantizer(_gptq_symbols, True)}
MAX_OUTLIER_FRACTION = 0.05  # beyond this a matrix is cheaper stored in fp16 outright
MAX_CORRECTION_RANK = 64


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class FormatAxis:
    """name: its QuantConfig key (a glob table, or one value when not per_tensor), MatrixFormat/StoredTensor field
    and directory key; space_key: the [allocation] list a study chooses from, and `search allocate`'s flag."""
    name: str
    space_key: str
    kind: type
    default: object  # off: the matrix is stored as before the axis existed
    valid: Callable
    rule: str  # what a config value must be, for its error line
    rule_many: str  # what the space's list must hold
    help: str  # the flag's help
    label: Callable = str  # a value in a candidate's format label, e.g. "out0.005"
    calibrates: Callable = lambda value: False  # whether a value needs the layer's input statistics
    per_tensor: bool = True
    offered: tuple = ()  # what `search allocate` offers when its flag is absent (per-tensor axes)


FORMAT_AXES = (
    FormatAxis("quantizer", "quantizers", str, "rtn", lambda v: v in QUANTIZERS, f"allowed are {', '.join(QUANTIZERS)}",
               " / ".join(QUANTIZERS), "how symbols are chosen: " + ", ".join(QUANTIZERS) + " or several, comma-separated",
               calibrates=lambda v: QUANTIZERS[v].calibrates, offered=tuple(QUANTIZERS)),
    FormatAxis("awq", "awq", float, 0.0, lambda v: _number(v) and 0 <= v <= 1, "must be an exponent in [0, 1] (0 = off)",
               "exponents in [0, 1] (0 = off)", "AWQ-lite exponents, e.g. 0,0.5 (0 = off)", lambda v: f"awq{v:g}", lambda v: v > 0, offered=(0.0, 0.5)),
    FormatAxis("outliers", "outliers", float, 0.0, lambda v: _number(v) and 0 <= v <= MAX_OUTLIER_FRACTION,
               f"must be a fraction in [0, {MAX_OUTLIER_FRACTION}]", f"fractions in [0, {MAX_OUTLIER_FRACTION}] of a matrix's weights",
               "fractions of each matrix's weights kept exact in fp16, e.g. 0,0.001,0.005", lambda v: f"out{v:g}", offered=(0.0, 0.001)),
    # The correction's SVD weights input channels by their activations: it calibrates too.
    FormatAxis("rank", "ranks", int, 0, lambda v: _integer(v) and 0 <= v <= MAX_CORRECTION_RANK,
               f"must be an integer in [0, {MAX_CORRECTION_RANK}]", f"integers in [0, {MAX_CORRECTION_RANK}]",
               "ranks of the low-rank error correction, e.g. 0,4,16 (0 = none)", lambda v: f"r{v}", lambda v: v > 0, offered=(0, 4)),
    FormatAxis("rank_bits", "rank_bits", int, 16, lambda v: v in (8, 16), "8 or 16", "8 or 16",
               "the correction's factors: 16 = fp16, 8 = int8 with per-row scales", per_tensor=False),
)
TENSOR_AXES = tuple(a for a in FORMAT_AXES if a.per_tensor)


@dataclass(frozen=True)
class MatrixFormat:
    bits: int
    clip: float
    # One field per FORMAT_AXES entry, in its order, with its default (tests/test_storage.py holds them together).
    quantizer: str = "rtn"
    awq: float = 0.0  # exponent of the per-input-channel scaling (0 = off)
    outliers: float = 0.0  # fraction of weights kept exact in fp16
    rank: int = 0  # rank of the error correction (0 = none)
    rank_bits: int = 16  # 16 = fp16 factors, 8 = int8 factors with per-row scales

    def needs_calibration(self) -> bool:
        return any(axis.calibrates(getattr(self, axis.name)) for axis in FORMAT_AXES)

    def is_plain(self) -> bool:
        """Stored exactly as before these options existed (RTN symbols and row scales only)."""
        return all(getattr(self, axis.name) == axis.default for axis in TENSOR_AXES)


def matrix_format(name: str, bits: int, clip: float, quant) -> MatrixFormat:
    return MatrixFormat(bits, clip, **{axis.name: axis.kind(pattern_value(getattr(quant, axis.name), name, axis.default))
                                       if axis.per_tensor else getattr(quant, axis.name) for axis in FORMAT_AXES})


def calibrates(quant) -> bool:
    """Whether any pattern of the config names a format that calibrates (GPTQ, AWQ, a correction)."""
    return any(axis.calibrates(v) for axis in TENSOR_AXES for v in getattr(quant, axis.name).values())


def needs_calibration(state_dict: dict, quant) -> list[str]:
    """Names of the tensors whose format needs calibration activations (GPTQ, AWQ, a correction)."""
    names = []
    for name, t in state_dict.items():
        kind, bits, clip = tensor_plan(name, t, quant)
        if kind == "int" and t.ndim == 2 and matrix_format(name, bits, clip, quant).needs_calibration():
            names.append(name)
    return names


def format_table_error(quant) -> str | None:
    """The error line for the first value of the config's format tables that its axis does not allow (None: all fine)."""
    for axis in FORMAT_AXES:
        table = getattr(quant, axis.name)
        if not axis.per_tensor:
            if not axis.valid(table):
                return f"quant.{axis.name} must be {axis.rule}, got {table}"
            continue
        for pattern, value in table.items():
            if not axis.valid(value):
                return f"quant.{axis.name}[{pattern!r}] = {value!r}: {axis.rule}"
    return None


def outlier_count(numel: int, fraction: float) -> int:
    return int(round(numel * fraction))


def _awq_scales(hessian: Tensor, rows: int, exponent: float) -> Tensor:
    s = _rms64(hessian, rows) ** exponent
    s = s / torch.exp(torch.log(s).mean())  # geometric mean 1: the row scales stay comparable
    return s.to(torch.float16).float().clamp_min(6e-8)


def _int8_rows(t: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per row at the row's max (factors have no outliers worth clipping)."""
    scale = (t.abs().amax(dim=1) / 127.0).to(torch.float16).float().clamp_min(6e-8)
    return torch.clamp(torch.round(t / scale[:, None]), -127, 127).to(torch.int8), scale.to(torch.float16)


@exact_fp32_matmuls()
def store_matrix(entry: StoredTensor, w: Tensor, fmt: MatrixFormat, clip_percentile: float,
                 hessian: Tensor | None = None, rows: int = 0, gptq=(0.01, 128, True)) -> StoredTensor:
    """Fill `entry` (kind "int") with the arrays of matrix `w` in format `fmt`. gptq: (damp, block, act_order)."""
    if fmt.needs_calibration() and hessian is None:
        raise ValueError(f"{entry.name}: its format ({fmt}) needs calibration activations")
    device = hessian.device if hessian is not None else torch.device("cpu")  # GPTQ and the SVD run where H is
    W = w.detach().float().to(device)
    H = hessian.detach().double() if hessian is not None else None
    for axis in TENSOR_AXES:
        setattr(entry, axis.name, getattr(fmt, axis.name))
    col = None
    if fmt.awq > 0:
        col = _awq_scales(H, rows, fmt.awq)
        W = W * col[None, :]
        H = H / (col.double()[:, None] * col.double()[None, :])  # the inputs the scaled matrix sees
        entry.col_scale = col.to(torch.float16).cpu().numpy()
    keep = None
    count = outlier_count(W.numel(), fmt.outliers)
    if count > 0:
        flat = torch.topk(W.abs().reshape(-1), count).indices.sort().values
        keep = torch.zeros(W.numel(), dtype=torch.bool, device=device)
        keep[flat] = True
        keep = keep.view_as(W)
    rest = W.masked_fill(keep, 0.0) if keep is not None else W  # outliers must not stretch the row scales
    q, scale16, kept = QUANTIZERS[fmt.quantizer].symbols(W, rest, H, fmt.bits, fmt.clip, clip_percentile, keep, gptq)
    entry.q, entry.scale = q.cpu().numpy(), scale16.cpu().numpy()
    if keep is not None:
        positions = keep.reshape(-1).nonzero().squeeze(1)
        values = kept.reshape(-1)[positions]
        if col is not None:
            values = values / col.repeat(W.shape[0])[positions]  # stored in the matrix's own space
        gaps = torch.diff(positions, prepend=torch.zeros(1, dtype=positions.dtype, device=device)).cpu().numpy()
        entry.outlier_gaps = gaps.astype(np.uint16 if gaps.max(initial=0) < 65_536 else np.uint32)
        entry.outlier_values = values.to(torch.float16).cpu().numpy()
    if fmt.rank > 0:
        weight = input_rms(hessian, rows)
        residual = (w.detach().float().cpu() - restore_matrix(entry, torch.float32)).to(device)
        attach_correction(entry, *factors_from_basis(low_rank_basis(residual, weight), fmt.rank, weight), fmt.rank_bits)
    return entry


def _rms64(hessian: Tensor, rows: int) -> Tensor:
    return (torch.diag(hessian).double() / max(rows, 1)).clamp_min(1e-12).sqrt()


def input_rms(hessian: Tensor, rows: int) -> Tensor:
    """Root-mean-square activation of each input channel, from H = X^T X over `rows` rows."""
    return _rms64(hessian, rows).float()


@exact_fp32_matmuls()
def low_rank_basis(residual: Tensor, column_weight: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """SVD of the residual W - W_hat, with input column j weighted by column_weight[j] (the rms activation
    it multiplies) when given, so a truncation minimises the output error rather than the weight error."""
    scaled = residual * column_weight[None, :] if column_weight is not None else residual
    return torch.linalg.svd(scaled, full_matrices=False)


@exact_fp32_matmuls()
def factors_from_basis(basis, rank: int, column_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """A (out x r), B (r x in): the best rank-r fit of the residual in that norm."""
    u, s, vh = basis
    rank = min(rank, s.numel())
    root = s[:rank].sqrt()
    a, b = u[:, :rank] * root[None, :], root[:, None] * vh[:rank]
    if column_weight is not None:
        b = b / column_weight[None, :]
    return a.contiguous(), b.contiguous()


def attach_correction(entry: StoredTensor, a: Tensor, b: Tensor, rank_bits: int) -> None:
    """Store the factors of a low-rank correction in `entry` (replacing any), fp16 or int8 per row."""
    entry.rank = a.shape[1]
    a, b = a.cpu(), b.cpu()
    if rank_bits == 8:
        (qa, sa), (qb, sb) = _int8_rows(a), _int8_rows(b)
        entry.lr_a, entry.lr_a_scale, entry.lr_b, entry.lr_b_scale = qa.numpy(), sa.numpy(), qb.numpy(), sb.numpy()
    else:
        entry.lr_a, entry.lr_b = a.to(torch.float16).numpy(), b.to(torch.float16).numpy()
        entry.lr_a_scale = entry.lr_b_scale = None


def restore_matrix(entry: StoredTensor, dtype: torch.dtype) -> Tensor:
    """The matrix a stored int entry stands for: symbols x row scales, AWQ undone, outliers put back, the
    low-rank correction added."""
    w = dequantize_tensor(torch.from_numpy(entry.q), torch.from_numpy(entry.scale), torch.float32)
    if entry.col_scale is not None:
        w = w / torch.from_numpy(entry.col_scale).float()[None, :]
    if entry.outlier_gaps is not None:
        positions = torch.from_numpy(entry.outlier_gaps.astype(np.int64)).cumsum(0)
        w.view(-1)[positions] = torch.from_numpy(entry.outlier_values).float()
    if entry.lr_a is not None:
        a, b = torch.from_numpy(entry.lr_a).float(), torch.from_numpy(entry.lr_b).float()
        if entry.lr_a_scale is not None:
            a, b = a * torch.from_numpy(entry.lr_a_scale).float()[:, None], b * torch.from_numpy(entry.lr_b_scale).float()[:, None]
        w = w + a @ b
    return w.to(dtype).contiguous()


def _dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def quantize_state_dict(state_dict: dict[str, Tensor], quant, hessians: dict | None = None, rows: dict | None = None) -> list[StoredTensor]:
    """Every tensor in its stored form. hessians/rows: calibration (collect_hessians, pgolf/gptq.py) for the
    tensors whose format needs it."""
    stored = []
    for name, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()  # (a format's own work runs on its Hessian's device)
        kind, bits, clip = tensor_plan(name, t, quant)
        entry = StoredTensor(name=name, kind=kind, shape=tuple(t.shape), dtype=_dtype_name(t), bits=bits, clip=clip)
        if kind == "int":
            fmt = matrix_format(name, bits, clip, quant) if t.ndim == 2 else MatrixFormat(bits, clip)
            if fmt.is_plain():
                q, scale = quantize_tensor(t, bits, clip, quant.clip_percentile)
                entry.q, entry.scale = q.numpy(), scale.numpy()
            else:
                hessian = (hessians or {}).get(name)
                store_matrix(entry, t, fmt, quant.clip_percentile, hessian, (rows or {}).get(name, 0),
                             (quant.gptq_damp, quant.gptq_block, quant.gptq_act_order))
        elif kind == "float16":
            entry.data = t.to(torch.float16).numpy()
        elif kind == "float32":
            entry.data = t.float().numpy()
        else:
            entry.data = t.numpy()
        stored.append(entry)
    return stored


def dequantize_state_dict(stored: list[StoredTensor]) -> dict[str, Tensor]:
    out = {}
    for entry in stored:
        dtype = getattr(torch, entry.dtype)
        if entry.kind == "int":
            out[entry.name] = restore_matrix(entry, dtype) if entry.q.ndim == 2 else \
                dequantize_tensor(torch.from_numpy(entry.q), torch.from_numpy(entry.scale), dtype)
        else:
            out[entry.name] = torch.from_numpy(np.array(entry.data)).to(dtype).contiguous()
    return out
