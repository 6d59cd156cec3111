"""Post-training quantization: per-tensor bit-widths, per-row scales, and the clip rule.

Where a tensor's bit-width is decided: `tensor_plan` (from QuantConfig.bits / .clip patterns); how a
matrix's symbols are chosen and what is stored beside them: pgolf/storage.py.
- 2..8 bits: symmetric signed integers in [-(2^(b-1) - 1), 2^(b-1) - 1], one fp16 scale per row for
  matrices (one fp32 scale for other shapes).
- 16 bits: fp16.
- Tensors with at most keep_float_max_numel elements stay float: control tensors (gains, mixes, skip
  weights) in fp32, the rest in fp16, as the official export does.
Clip rule: k > 0 clips each row at k * row std (step k * std / qmax); k = 0 is the official rule (the
clip_percentile-th percentile of |w| per row, scale floored at 1/qmax).
"""

import fnmatch
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pgolf.model import tensor_role

TENSOR_GROUPS = ("embedding", "attention", "mlp", "other")


@dataclass
class StoredTensor:
    name: str
    kind: str  # "int" | "float16" | "float32" | "raw"
    shape: tuple
    dtype: str  # dtype to restore, e.g. "float32", "bfloat16"
    bits: int = 0
    clip: float = 0.0
    q: np.ndarray | None = None  # int8 symbols (kind "int")
    scale: np.ndarray | None = None  # fp16 per row, or one fp32 value
    data: np.ndarray | None = None  # the stored values (kinds "float16", "float32", "raw")
    # Matrix formats beyond plain symbols x row scales (pgolf/storage.py); None / defaults when unused.
    quantizer: str = "rtn"
    awq: float = 0.0
    outliers: float = 0.0
    rank: int = 0
    col_scale: np.ndarray | None = None  # fp16 per input channel (AWQ)
    outlier_gaps: np.ndarray | None = None  # uint16/uint32 gaps between sorted flat positions
    outlier_values: np.ndarray | None = None  # fp16
    lr_a: np.ndarray | None = None  # low-rank factors, fp16 or int8
    lr_b: np.ndarray | None = None
    lr_a_scale: np.ndarray | None = None  # fp16 per row, for int8 factors
    lr_b_scale: np.ndarray | None = None


def tensor_group(name: str) -> str:
    role = tensor_role(name)
    if role.kind == "embedding":
        return "embedding"
    if role.part == "attn" and name.endswith(".weight"):  # its matrices (and their per-repeat deltas)
        return "attention"
    if role.part == "mlp":
        return "mlp"
    return "other"


def pattern_value(patterns: dict, name: str, default):
    """The value of the last glob pattern matching `name` (later entries override earlier ones)."""
    value = default
    for pattern, v in patterns.items():
        if fnmatch.fnmatchcase(name, pattern):
            value = v
    return value


def tensor_plan(name: str, t: Tensor, quant) -> tuple[str, int, float]:
    """(kind, bits, clip multiplier) for one tensor under a QuantConfig."""
    if not t.is_floating_point():
        return "raw", 0, 0.0
    if tensor_role(name).kind == "gain":
        return "float32", 32, 0.0
    if t.numel() <= quant.keep_float_max_numel:
        return "float16", 16, 0.0
    bits = int(pattern_value(quant.bits, name, 8))
    if bits == 16:
        return "float16", 16, 0.0
    return "int", bits, float(pattern_value(quant.clip, name, 0.0))


def _clip_and_scale(rows: Tensor, qmax: float, clip_k: float, clip_percentile: float) -> tuple[Tensor, Tensor]:
    """Per-row clip values and quantization steps of a 2-D fp32 tensor under the clip rule."""
    if clip_k > 0:
        # As in the records: the step is k * std / qmax, so k trades resolution for bytes like bits do
        # (a k beyond the row's max leaves outer levels unused, which the entropy coder makes cheap).
        clip = clip_k * rows.std(dim=1, correction=0)
        return clip, (clip / qmax).clamp_min(1e-12)
    clip = torch.quantile(rows.abs(), clip_percentile / 100.0, dim=1)
    return clip, (clip / qmax).clamp_min(1.0 / qmax)


def row_scales(w: Tensor, bits: int, clip_k: float, clip_percentile: float) -> Tensor:
    """The fp32 values of the fp16 per-row scales a matrix is stored with (what any quantizer of it must use)."""
    _, scale = _clip_and_scale(w.float(), float(2 ** (bits - 1) - 1), clip_k, clip_percentile)
    return scale.to(torch.float16).float().clamp_min(6e-8)


def quantize_tensor(t: Tensor, bits: int, clip_k: float, clip_percentile: float) -> tuple[Tensor, Tensor]:
    """Integer symbols (int8) and scales such that t ~= q * scale (per row for matrices)."""
    qmax = float(2 ** (bits - 1) - 1)
    t32 = t.float()
    rows = t32 if t32.ndim == 2 else t32.reshape(1, -1)
    clip, scale = _clip_and_scale(rows, qmax, clip_k, clip_percentile)
    if t32.ndim == 2:
        # Quantize against the scale as stored (fp16), so dequantization reproduces q * scale exactly.
        scale = scale.to(torch.float16).float().clamp_min(6e-8)
    clipped = torch.maximum(torch.minimum(rows, clip[:, None]), -clip[:, None])
    q = torch.clamp(torch.round(clipped / scale[:, None]), -qmax, qmax).to(torch.int8)
    if t32.ndim == 2:
        return q.contiguous(), scale.to(torch.float16)
    return q.reshape(t32.shape).contiguous(), scale.reshape(())


def dequantize_tensor(q: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    if scale.ndim > 0:
        return (q.float() * scale.float().view(q.shape[0], *([1] * (q.ndim - 1)))).to(dtype).contiguous()
    return (q.float() * float(scale)).to(dtype).contiguous()


def symbol_entropy_bits(stored: list[StoredTensor]) -> float:
    """Order-0 entropy (bits) of all integer symbols, each tensor with its own distribution."""
    total = 0.0
    for entry in stored:
        if entry.kind != "int":
            continue
        counts = np.bincount(entry.q.reshape(-1).astype(np.int64) + 128, minlength=256)
        p = counts[counts > 0] / entry.q.size
        total += float(-(p * np.log2(p)).sum()) * entry.q.size
    return total
