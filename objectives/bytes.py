"""Predict a config's artifact bytes before training: parameter counts x bits x calibrated compression.

For each tensor the model will have (shapes from the config alone), the stored form follows the same
rules as pgolf.quant; its compressed size comes from the predictor table (`Calibration`, stored as
objectives/calibration.json; not the layers' H that GPTQ/AWQ calibrate on), measured on real trained
weights: compressed bits per weight of integer symbols for each (role, bits, clip), and compressed
bytes per fp16 value / per row scale, with the symbols' rate scaled to the config's compressor. Code bytes
are exact: the counted script (plain or self-extracting) is built and measured, pgolf.assemble.code_bytes. A study refines
its calibration from its own trained checkpoints (see `measure_calibration`), so predictions improve as
the study runs.
"""

import json
import os
import statistics
from dataclasses import dataclass, field

import numpy as np
import torch
import zstandard

from pgolf.artifact import byte_shuffle
from pgolf.assemble import code_bytes
from pgolf.config import QuantConfig, RunConfig, config_to_dict
from pgolf.model import tensor_role
from pgolf.quant import quantize_tensor
from pgolf.shapes import unfilled_state
from pgolf.storage import MatrixFormat, matrix_format, outlier_count

RTN_PERCENTILE = QuantConfig().clip_percentile  # the allocation's RTN options clip as the model file does
DEFAULT_CALIBRATION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calibration.json")
HEADER_BYTES_PER_TENSOR = 24  # compressed JSON directory entry, measured on real artifacts
FIXED_OVERHEAD = 120  # prefix + frame table + empty-frame overheads
FORMAT_HEADER_BYTES = 40  # compressed directory bytes of a matrix's format fields and extra array entries


@dataclass(frozen=True)  # shared between callers (tensor_infos caches them)
class TensorInfo:
    name: str
    shape: tuple
    numel: int
    rows: int
    role: str  # "embedding" | "matrix" | "control" | "other"


_INFOS: dict[str, tuple] = {}  # by the model config's repr: a coordinator predicts each trial's bytes once per compressor


def tensor_infos(model_cfg) -> list[TensorInfo]:
    """Every stored tensor of a model config, without drawing its weights (the model is built once per config in a
    process, ~0.1 s for the demo's shapes)."""
    key = repr(model_cfg)
    if key not in _INFOS:
        infos = []
        for name, t in unfilled_state(model_cfg).items():
            kind = tensor_role(name).kind
            role = "control" if kind == "gain" else "embedding" if kind == "embedding" else "matrix" if t.ndim == 2 else "other"
            infos.append(TensorInfo(name, tuple(t.shape), t.numel(), t.shape[0] if t.ndim == 2 else 1, role))
        _INFOS[key] = tuple(infos)
    return list(_INFOS[key])


def _key(role: str, bits: int, clip: float) -> str:
    return f"{'embedding' if role == 'embedding' else 'matrix'}/{bits}/{clip:g}"


@dataclass
class Calibration:
    bits_per_weight: dict = field(default_factory=dict)  # "matrix/6/12.85" -> compressed bits per weight
    fp16_bytes_per_value: float = 1.85
    scale_bytes_per_row: float = 1.9
    observations: int = 0
    # The formats of pgolf/storage.py, measured on official_tiny (bench/predictor_error.py --formats):
    gptq_bits_ratio: float = 1.055  # GPTQ's error feedback spreads symbols: more bits than RTN's
    # Per kept weight: its fp16 value, its gap-coded position, and the finer steps of the rest of its row
    # (the row's std, hence a k x std clip, shrinks without it).
    outlier_bytes: float = 2.9
    factor_bytes_per_value: float = 1.88  # fp16 low-rank factor values
    int8_factor_bytes_per_value: float = 0.98  # int8 ones, row scales included
    # Integer-symbol bytes under each compressor relative to zstd's (whose rate the table above measures), from
    # bench/codec_bytes.py on official_tiny at int6 (zstd-22 1.0130x order-0, rans 0.9855x, brotli-11 1.0083x).
    # lzma (1.0469x there) stays 1.0: the allocation packs it only where it comes out smaller than zstd.
    compressor_ratios: dict = field(default_factory=lambda: {"zstd": 1.0, "lzma": 1.0, "rans": 0.973, "brotli": 0.995})

    def compressor_ratio(self, compressor: str) -> float:
        """Compressed integer-symbol bytes under `compressor` relative to zstd's (fp16 values and row scales: the same)."""
        return self.compressor_ratios.get(compressor, 1.0)

    def symbol_bits_ratio(self, quantizer: str) -> float:
        """Compressed symbol bits under a quantizer of pgolf/storage.py's QUANTIZERS, relative to RTN's."""
        return {"rtn": 1.0, "gptq": self.gptq_bits_ratio}[quantizer]

    def fp16_bytes(self, role: str) -> float:
        """Compressed bytes per fp16 value for tensors of this role."""
        return self.bits_per_weight.get(_key(role, 16, 0.0), 8 * self.fp16_bytes_per_value) / 8

    def int_bits(self, role: str, bits: int, clip: float) -> float:
        key = _key(role, bits, clip)
        if key in self.bits_per_weight:
            return self.bits_per_weight[key]
        # An unmeasured option: the nearest measured clip at the same width, else the width itself.
        same = [(abs(float(k.split("/")[2]) - clip), v) for k, v in self.bits_per_weight.items()
                if k.startswith(key.rsplit("/", 1)[0] + "/")]
        return min(same)[1] if same else float(bits)

    @classmethod
    def from_observations(cls, observations: list[dict]) -> "Calibration":
        """Median of per-checkpoint measurements (each as made by measure_calibration)."""
        if not observations:
            return load_calibration()
        keys = {k for o in observations for k in o["bits_per_weight"]}
        return cls(bits_per_weight={k: statistics.median(o["bits_per_weight"][k] for o in observations if k in o["bits_per_weight"]) for k in keys},
                   fp16_bytes_per_value=statistics.median(o["fp16_bytes_per_value"] for o in observations),
                   scale_bytes_per_row=statistics.median(o["scale_bytes_per_row"] for o in observations),
                   observations=len(observations))


def load_calibration(path: str = DEFAULT_CALIBRATION) -> Calibration:
    if not os.path.exists(path):
        return Calibration()
    with open(path, encoding="utf-8") as f:
        return Calibration(**json.load(f))


def compressed_symbols(raw: bytes) -> int:
    """Estimated compressed size of integer symbols, as the model file's strong compressors reach it.
    zstd-15 lands within 1.5% of zstd-22 on quantized weights at 3-4x its speed; the fast levels do
    not: level 3 is 4% over at int8 and 22% over at int4, where most symbols are -1, 0 or 1 (measured)."""
    return len(zstandard.ZstdCompressor(level=15).compress(raw))


def compressed_floats(arr: np.ndarray) -> int:
    """Estimated compressed size of float values, byte-shuffled as the model file stores them. Their high
    bytes (sign and exponent) have structure only the strong levels find: level 3 overestimates by ~15%."""
    return len(zstandard.ZstdCompressor(level=19).compress(byte_shuffle(arr)))


def rtn_sizes(state_dict: dict, bits_options, clip_options, names=None) -> dict:
    """(name, bits, clip) -> (compressed symbol bytes, compressed scale bytes, squared error) of each 2-D
    tensor (default: every non-control matrix) stored by round-to-nearest at each width and clip; bits 16
    is fp16 (clip 0). The allocation's options and the study's byte calibration read the same table, so
    each tensor is quantized and compressed once per option; zstd releases the GIL, so the compressions
    run on every core."""
    from concurrent.futures import ThreadPoolExecutor

    names = names if names is not None else [n for n, t in state_dict.items() if t.ndim == 2 and t.is_floating_point()
                                             and tensor_role(n).kind != "gain"]
    jobs = [(n, b, c) for n in names for b in bits_options for c in ([0.0] if b == 16 else clip_options)]

    def size(job):
        name, bits, clip = job
        t = state_dict[name].detach().float().cpu()
        if bits == 16:
            half = t.to(torch.float16)
            return compressed_floats(half.numpy()), 0, float((half.float() - t).pow(2).sum())
        q, scale = quantize_tensor(t, bits, clip, RTN_PERCENTILE)
        restored = q.float() * scale.float()[:, None]
        return compressed_symbols(q.numpy().tobytes()), compressed_floats(scale.numpy()), float((restored - t).pow(2).sum())

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(jobs, pool.map(size, jobs)))


def measure_calibration(state_dict: dict, bits_options, clip_options, sizes: dict | None = None) -> dict:
    """Compressed bits per weight of each (role, bits, clip) on real weights, plus fp16 and scale costs.
    `sizes`: a rtn_sizes table already measured for these weights (else measured here)."""
    names = [n for n, t in state_dict.items() if t.ndim == 2 and tensor_role(n).kind != "gain" and t.numel() >= 4096]
    widths = sorted(set(bits_options) | {16})
    sizes = sizes if sizes is not None else rtn_sizes(state_dict, widths, clip_options, names)
    sums: dict = {}
    fp16_bytes = fp16_values = scale_bytes = scale_rows = 0
    for name in names:
        t = state_dict[name]
        role = "embedding" if tensor_role(name).kind == "embedding" else "matrix"
        half_bytes = sizes[(name, 16, 0.0)][0]
        fp16_bytes += half_bytes
        fp16_values += t.numel()
        total = sums.setdefault(_key(role, 16, 0.0), [0, 0])  # fp16 compresses differently per role
        total[0] += 8 * half_bytes
        total[1] += t.numel()
        for bits in bits_options:
            if bits == 16:
                continue
            for clip in clip_options:
                symbols, scales, _ = sizes[(name, bits, clip)]
                total = sums.setdefault(_key(role, bits, clip), [0, 0])
                total[0] += 8 * symbols
                total[1] += t.numel()
                if bits == bits_options[0] and clip == clip_options[0]:
                    scale_bytes += scales
                    scale_rows += t.shape[0]
    return {"bits_per_weight": {k: v[0] / v[1] for k, v in sums.items()},
            "fp16_bytes_per_value": fp16_bytes / max(fp16_values, 1),
            "scale_bytes_per_row": scale_bytes / max(scale_rows, 1)}


def predict_model_bytes(model_cfg, quant: QuantConfig, calibration: Calibration) -> int:
    """Predicted compressed model-file bytes for a model config stored under `quant`."""
    from pgolf.quant import pattern_value

    total = FIXED_OVERHEAD
    for info in tensor_infos(model_cfg):
        total += HEADER_BYTES_PER_TENSOR
        if info.role == "control":
            total += 4 * info.numel
            continue
        bits = int(pattern_value(quant.bits, info.name, 8))
        if info.numel <= quant.keep_float_max_numel or bits == 16:
            total += calibration.fp16_bytes(info.role) * info.numel
            continue
        clip = float(pattern_value(quant.clip, info.name, 0.0))
        fmt = matrix_format(info.name, bits, clip, quant) if len(info.shape) == 2 else MatrixFormat(bits, clip)
        symbol_bits = (calibration.int_bits(info.role, bits, clip) * calibration.symbol_bits_ratio(fmt.quantizer)
                       * calibration.compressor_ratio(quant.compressor))
        total += symbol_bits * info.numel / 8 + calibration.scale_bytes_per_row * info.rows
        total += _format_bytes(fmt, info, calibration)
    return int(round(total))


def _format_bytes(fmt: MatrixFormat, info: TensorInfo, calibration: Calibration) -> float:
    """Bytes a matrix's format adds beside its symbols and row scales: channel scales, outliers, factors."""
    if fmt.is_plain():
        return 0.0
    rows, cols = info.shape
    extra = FORMAT_HEADER_BYTES
    if fmt.awq > 0:
        extra += calibration.fp16_bytes_per_value * cols
    extra += calibration.outlier_bytes * outlier_count(info.numel, fmt.outliers)
    rank = min(fmt.rank, rows, cols)
    if rank:
        per_value = calibration.factor_bytes_per_value if fmt.rank_bits == 16 else calibration.int8_factor_bytes_per_value
        extra += per_value * rank * (rows + cols)
    return extra


def predict_artifact_bytes(config: RunConfig, calibration: Calibration) -> int:
    return predict_model_bytes(config.model, config.quant, calibration) + code_bytes(config_to_dict(config))
