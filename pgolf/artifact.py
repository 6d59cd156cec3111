"""The compressed model file: a versioned container of raw arrays, with no pickle.

Layout (little endian):
    magic b"PGOLFMDL" | version u16 | compressor u8 | frame count u8
    frame table: (raw length u32, compressed length u32, crc32 of raw u32) per frame
    frames: frame 0 is the JSON directory (model/eval settings, one entry per tensor); frames 1..4 hold
    the arrays of the tensor groups embedding, attention, mlp, other (per-row scales, control tensors).
One compressed frame per group makes the bytes per group exact. Float arrays are stored byte-shuffled
(all low bytes, then all high bytes), which compresses better. The loader checks every length, offset
and checksum, so a truncated, padded or altered file is rejected before any tensor is built.
"""

import json
import lzma
import struct
import zlib

import numpy as np
import zstandard

from pgolf.entropy_codec import EntropyCodecError, decode_frame, encode_frame
from pgolf.quant import TENSOR_GROUPS, StoredTensor, tensor_group
from pgolf.storage import TENSOR_AXES

MAGIC = b"PGOLFMDL"
FORMAT_VERSION = 1
COMPRESSOR_IDS = {"zstd": 1, "lzma": 2, "rans": 3, "brotli": 4}
PREFIX = struct.Struct("<8sHBB")
FRAME = struct.Struct("<III")
MAX_RAW_BYTES = 1 << 31
ARRAY_DTYPES = {"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "float16", "float32", "bool"}
# Arrays of the matrix formats in pgolf/storage.py, beside the symbols "q" and row scales "scale".
EXTRA_ROLES = ("col_scale", "outlier_gaps", "outlier_values", "lr_a", "lr_b", "lr_a_scale", "lr_b_scale")
PLAIN_FORMAT = {axis.name: axis.default for axis in TENSOR_AXES}
RESTORE_DTYPES = ARRAY_DTYPES | {"bfloat16", "float64"}


class ArtifactError(ValueError):
    """A model file that is empty, truncated, altered, not a pgolf artifact of a known version, or holds NaN/inf."""


def compress(raw: bytes, compressor: str, level: int, matrices=()) -> bytes:
    """matrices: (offset, symbols, bits) of raw's integer matrices, for "rans" (zstd at `level` for the rest)."""
    if compressor == "rans":
        return encode_frame(raw, list(matrices), level)
    if compressor == "zstd":
        return zstandard.ZstdCompressor(level=level).compress(raw)
    if compressor == "lzma":
        return lzma.compress(raw, preset=level | lzma.PRESET_EXTREME)
    if compressor == "brotli":
        import brotli  # optional: imported only by the scripts whose model file is brotli-coded

        return brotli.compress(raw, quality=level)
    raise ArtifactError(f"unknown compressor {compressor!r}")


def _decompress(blob: bytes, compressor: str, raw_len: int) -> bytes:
    try:
        if compressor == "zstd":
            raw = zstandard.ZstdDecompressor().decompress(blob, max_output_size=raw_len)
        elif compressor == "rans":
            raw = decode_frame(blob, raw_len)
        elif compressor == "brotli":
            raw = _brotli_decompress(blob, raw_len)
        else:
            raw = lzma.LZMADecompressor().decompress(blob, max_length=raw_len)
    except (zstandard.ZstdError, lzma.LZMAError, EntropyCodecError) as exc:
        raise ArtifactError(f"corrupt compressed frame ({exc})") from None
    return raw


def _brotli_decompress(blob: bytes, raw_len: int) -> bytes:
    try:
        import brotli
    except ImportError:
        raise ArtifactError("the model file is brotli-coded: install the brotli package (pip install brotli)") from None
    try:
        return brotli.Decompressor().process(blob, output_buffer_limit=raw_len + 1)  # a frame claiming less is refused
    except brotli.error as exc:
        raise ArtifactError(f"corrupt compressed frame ({exc})") from None


def byte_shuffle(arr: np.ndarray) -> bytes:
    width = arr.dtype.itemsize
    raw = np.ascontiguousarray(arr).view(np.uint8)
    return raw.reshape(-1, width).T.tobytes() if width > 1 else raw.tobytes()


def byte_unshuffle(raw: bytes, dtype: np.dtype, count: int) -> np.ndarray:
    width = dtype.itemsize
    planes = np.frombuffer(raw, dtype=np.uint8)
    if width > 1:
        planes = planes.reshape(width, count).T
    return np.array(planes, order="C").view(dtype).reshape(-1)  # a writable copy


def _stored_arrays(entry: StoredTensor) -> list[tuple[str, np.ndarray, str]]:
    """(role, array, group) for each array a tensor stores. Scales and a format's arrays go to the "other"
    group: mixed into a block of integer symbols, fp16 values and gaps spoil the entropy coder's statistics
    for the whole block (measured: +6% on a 128 x 256 int5 matrix with 0.5% outliers)."""
    group = tensor_group(entry.name)
    if entry.kind == "int":
        arrays = [("q", entry.q, group), ("scale", entry.scale, "other")]
        arrays += [(role, getattr(entry, role), "other") for role in EXTRA_ROLES if getattr(entry, role) is not None]
        return arrays
    return [("data", entry.data, group)]


def _format_fields(entry: StoredTensor) -> dict:
    """The matrix-format fields of a directory entry; none for a plain one, so such files are unchanged."""
    fields = {axis.name: getattr(entry, axis.name) for axis in TENSOR_AXES}
    return {"format": fields} if fields != PLAIN_FORMAT else {}


def _np_dtype(name: str) -> np.dtype:
    return np.dtype(name).newbyteorder("<")


def _payloads(stored: list[StoredTensor]) -> tuple[list[bytes], dict, list]:
    """(payload per tensor group, its integer matrices as compress takes them, directory entries)."""
    payloads = {g: bytearray() for g in TENSOR_GROUPS}
    matrices = {g: [] for g in TENSOR_GROUPS}
    directory = []
    for entry in stored:
        arrays = []
        for role, arr, group in _stored_arrays(entry):
            data = byte_shuffle(arr)
            if role == "q":
                matrices[group].append((len(payloads[group]), arr, entry.bits))
            arrays.append([role, group, len(payloads[group]), len(data), str(arr.dtype), list(arr.shape)])
            payloads[group] += data
        directory.append({"name": entry.name, "kind": entry.kind, "shape": list(entry.shape), "dtype": entry.dtype,
                          "bits": entry.bits, "clip": entry.clip, "arrays": arrays, **_format_fields(entry)})
    return [bytes(payloads[g]) for g in TENSOR_GROUPS], matrices, directory


def pack(stored: list[StoredTensor], meta: dict, compressor: str = "zstd", level: int = 22, alternatives=()) -> tuple[bytes, dict]:
    """The model file's bytes, and its compressed bytes per tensor group (directory counted in "other").
    alternatives: the same tensors in other orders (pgolf/row_order.py): the smallest file of all is written."""
    if compressor not in COMPRESSOR_IDS:
        raise ArtifactError(f"unknown compressor {compressor!r}")
    payloads, matrices, directory = _payloads(stored)
    header = json.dumps({"meta": meta, "tensors": directory}, separators=(",", ":")).encode()
    directory_frame = compress(header, compressor, level)
    frames = [compress(raw, compressor, level, matrices[g]) for g, raw in zip(TENSOR_GROUPS, payloads)]
    for other in alternatives:
        other_payloads, other_matrices, _ = _payloads(other)
        other_frames = [frame if raw == first else compress(raw, compressor, level, other_matrices[g])
                        for g, raw, first, frame in zip(TENSOR_GROUPS, other_payloads, payloads, frames)]
        if sum(map(len, other_frames)) < sum(map(len, frames)):
            payloads, frames = other_payloads, other_frames
    raws, frames = [header] + payloads, [directory_frame] + frames
    table = b"".join(FRAME.pack(len(raw), len(frame), zlib.crc32(raw)) for raw, frame in zip(raws, frames))
    prefix = PREFIX.pack(MAGIC, FORMAT_VERSION, COMPRESSOR_IDS[compressor], len(frames))
    blob = prefix + table + b"".join(frames)
    sizes = {g: len(f) for g, f in zip(TENSOR_GROUPS, frames[1:])}
    sizes["other"] += len(prefix) + len(table) + len(frames[0])
    return blob, sizes


def unpack(blob: bytes) -> tuple[dict, list[StoredTensor]]:
    """(meta, stored tensors) of a model file; raises ArtifactError naming the first problem found."""
    if len(blob) < PREFIX.size:
        raise ArtifactError(f"model file is truncated: {len(blob)} bytes, shorter than its header" if blob else "the file is empty")
    magic, version, compressor_id, count = PREFIX.unpack_from(blob, 0)
    if magic != MAGIC:
        raise ArtifactError("not a pgolf model file (wrong magic)")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"unsupported model file version {version} (this code reads version {FORMAT_VERSION})")
    names = {v: k for k, v in COMPRESSOR_IDS.items()}
    if compressor_id not in names:
        raise ArtifactError(f"model file names unknown compressor id {compressor_id}")
    if count != 1 + len(TENSOR_GROUPS):
        raise ArtifactError(f"model file has {count} frames, expected {1 + len(TENSOR_GROUPS)}")
    table_end = PREFIX.size + count * FRAME.size
    if len(blob) < table_end:
        raise ArtifactError("model file is truncated inside its frame table")
    table = [FRAME.unpack_from(blob, PREFIX.size + i * FRAME.size) for i in range(count)]
    expected = table_end + sum(comp for _, comp, _ in table)
    if len(blob) != expected:
        state = "truncated" if len(blob) < expected else "padded"
        raise ArtifactError(f"model file is {state}: {len(blob)} bytes, its frame table says {expected}")
    raws, pos = [], table_end
    for i, (raw_len, comp_len, crc) in enumerate(table):
        if raw_len > MAX_RAW_BYTES:
            raise ArtifactError(f"frame {i} claims {raw_len} bytes, more than any model holds")
        raw = _decompress(blob[pos : pos + comp_len], names[compressor_id], raw_len)
        if len(raw) != raw_len or zlib.crc32(raw) != crc:
            raise ArtifactError(f"frame {i} of the model file fails its length/checksum: the file was altered")
        raws.append(raw)
        pos += comp_len
    try:
        header = json.loads(raws[0])
        meta, directory = header["meta"], header["tensors"]
        stored = [_read_entry(item, dict(zip(TENSOR_GROUPS, raws[1:]))) for item in directory]
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ArtifactError):
            raise
        raise ArtifactError(f"model file directory is malformed ({exc!r})") from None
    return meta, stored


def _read_entry(item: dict, payloads: dict) -> StoredTensor:
    entry = StoredTensor(name=str(item["name"]), kind=str(item["kind"]), shape=tuple(int(s) for s in item["shape"]),
                         dtype=str(item["dtype"]), bits=int(item["bits"]), clip=float(item["clip"]))
    if entry.kind not in ("int", "float16", "float32", "raw") or entry.dtype not in RESTORE_DTYPES:
        raise ArtifactError(f"tensor {entry.name}: unknown kind {entry.kind!r} or dtype {entry.dtype!r}")
    fmt = item.get("format", PLAIN_FORMAT)
    for axis in TENSOR_AXES:
        setattr(entry, axis.name, axis.kind(fmt[axis.name]))
    for role, group, offset, nbytes, dtype, shape in item["arrays"]:
        if group not in payloads or dtype not in ARRAY_DTYPES or role not in ("q", "scale", "data", *EXTRA_ROLES):
            raise ArtifactError(f"tensor {entry.name}: bad array descriptor")
        np_dtype = _np_dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        payload = payloads[group]
        if offset < 0 or nbytes != count * np_dtype.itemsize or offset + nbytes > len(payload):
            raise ArtifactError(f"tensor {entry.name}: array {role} does not fit its frame (size mismatch)")
        arr = byte_unshuffle(payload[offset : offset + nbytes], np_dtype, count).reshape(shape)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():  # else it would surface only as a NaN score
            raise ArtifactError(f"tensor {entry.name} holds {'NaN' if np.isnan(arr).any() else 'inf'}")
        setattr(entry, role, arr)
    expected_count = int(np.prod(entry.shape, dtype=np.int64)) if entry.shape else 1
    main = entry.q if entry.kind == "int" else entry.data
    if main is None or main.size != expected_count or (entry.kind == "int" and entry.scale is None):
        raise ArtifactError(f"tensor {entry.name}: stored arrays do not match its shape {list(entry.shape)}")
    if any(getattr(entry, role) is not None for role in EXTRA_ROLES):
        _check_format_arrays(entry)
    return entry


def _check_format_arrays(entry: StoredTensor) -> None:
    """The arrays beside a matrix's symbols fit it: else restoring it would index out of range or mis-shape."""
    where = f"tensor {entry.name}"
    if entry.kind != "int" or len(entry.shape) != 2:
        raise ArtifactError(f"{where}: only integer matrices carry format arrays")
    out, inp = entry.shape
    if entry.col_scale is not None and (entry.col_scale.shape != (inp,) or entry.col_scale.dtype != np.float16 or (entry.col_scale <= 0).any()):
        raise ArtifactError(f"{where}: its channel scales do not match {inp} positive input channels")
    if (entry.outlier_gaps is None) != (entry.outlier_values is None):
        raise ArtifactError(f"{where}: outlier positions and values must come together")
    if entry.outlier_gaps is not None:
        gaps = entry.outlier_gaps
        if gaps.ndim != 1 or gaps.dtype.kind != "u" or entry.outlier_values.shape != gaps.shape or entry.outlier_values.dtype != np.float16:
            raise ArtifactError(f"{where}: outlier positions and values do not match")
        last = int(gaps.astype(np.int64).sum())
        if (gaps[1:] == 0).any():
            raise ArtifactError(f"{where}: outlier positions repeat")
        if gaps.size and last >= out * inp:
            raise ArtifactError(f"{where}: outlier position {last:,} is out of range for a {out} x {inp} matrix")
    if (entry.lr_a is None) != (entry.lr_b is None):
        raise ArtifactError(f"{where}: low-rank correction needs both factors")
    if entry.lr_a is not None:
        a, b = entry.lr_a, entry.lr_b
        int8 = a.dtype == np.int8
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != out or b.shape[1] != inp or a.shape[1] != b.shape[0] \
                or a.dtype != b.dtype or a.dtype not in (np.int8, np.float16):
            raise ArtifactError(f"{where}: low-rank factors {list(a.shape)} x {list(b.shape)} do not fit {out} x {inp}")
        scales = (entry.lr_a_scale, entry.lr_b_scale)
        if int8 != all(x is not None for x in scales) or (int8 and (scales[0].shape != (out,) or scales[1].shape != (b.shape[0],))):
            raise ArtifactError(f"{where}: int8 low-rank factors need one scale per row (and fp16 ones none)")
