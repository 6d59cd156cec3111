"""An entropy coder for quantized weight matrices that codes below their order-0 entropy.

The symbols of a quantized matrix are close to Gaussian within a row (rows are normalised by their
scale) but their spread differs from input column to input column, which a byte-oriented compressor
(zstd, lzma) cannot see. So every column gets a stored class (4 bits), and the symbols are coded with one
stored frequency table per (bit width, class), shared by all matrices of a stream. The encoder picks the
classes: equal-count bins of the columns' rms, then Lloyd iterations on the columns' histograms.
Measured on official_tiny at int6 (ideal code lengths, tables free): the column is worth ~2% of order-0;
the row scale nothing (rows are normalised by it), the previous symbol ~0.1% more, so neither is a context.

Coder: rANS (32-bit states, 16-bit words, table precision 2^prec picked per stream by its cost), the symbol
sequence split into `lanes` contiguous chunks coded in lockstep, so the decoder is a loop over steps whose
body is numpy operations across all lanes. Words are laid out in the order the decoder consumes them
(step by step, lanes in order), so no per-lane offsets are stored.

Layout (little endian): magic b"PGEC" | version u8 | prec u8 | classes u8 | matrix count u32 |
per matrix: rows u32, cols u32, bits u8 | table count u16 | per table: bits u8, class u8, first symbol u8,
symbol count u8, frequencies (LEB128) | per matrix: its one class u8, or 255 and then its columns'
classes (4 bits each, zero-padded to a byte) | lane count u32 | crc32 of the symbols u32 | final lane
states (u32 each) | words (u16 each).
The decoder checks every size against the bytes it was given, each table's sum, the lanes' final
states and the checksum, and raises EntropyCodecError on any mismatch; it never indexes outside a buffer.
"""

import struct
import zlib

import numpy as np
import zstandard

CODEC_MAGIC = b"PGEC"
CODEC_VERSION = 1
COLUMN_CLASSES = 16  # stored as 4 bits a column (measured on official_tiny: 8..32 classes within 0.2% of each other)
LLOYD_ROUNDS = 12
MIN_CLASS_ROWS = 32  # matrices with fewer rows put all their columns in one class
PER_COLUMN = 255  # a matrix's class byte: this, then its columns' classes; else the one class of all its columns
RANS_LOW = 1 << 16  # states live in [RANS_LOW, 2^32): one 16-bit word renormalises a state after any symbol
STEPS_PER_LANE = 16_384  # lanes = ceil(symbols / this): 4 bytes of state per lane vs one numpy step per symbol row
PRECISIONS = range(10, 16)
MAX_SYMBOLS = 1 << 28  # a bound on what the decoder allocates for a header's claim (16 MB artifacts hold far fewer)
_HEAD = struct.Struct("<4sBBBI")
_MATRIX = struct.Struct("<IIB")


class EntropyCodecError(ValueError):
    """Coded bytes that are truncated, altered, or not of this codec and version."""


def _symbols(q: np.ndarray, bits: int) -> np.ndarray:
    """Symbols 0..2^bits - 2 of a matrix of signed integers in [-(2^(bits-1) - 1), 2^(bits-1) - 1]."""
    qmax = (1 << (bits - 1)) - 1
    flat = np.asarray(q).reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < -qmax or flat.max() > qmax):
        raise EntropyCodecError(f"symbols outside [-{qmax}, {qmax}] for {bits} bits")
    return flat + qmax


def _relative_column_rms(q: np.ndarray) -> np.ndarray:
    """Each column's rms symbol relative to the whole matrix's."""
    sq = np.square(q.astype(np.float64))
    if sq.size == 0:
        return np.ones(q.shape[1])
    return np.sqrt(sq.mean(axis=0)) / max(float(np.sqrt(sq.mean())), 1e-9)


def _lloyd(columns: np.ndarray, rms: np.ndarray, count: int, rounds: int) -> np.ndarray:
    """Labels of `count` classes for columns (histograms): equal-count rms bins, then Lloyd iterations."""
    labels = np.searchsorted(np.quantile(rms, np.linspace(0, 1, count + 1)[1:-1]), rms)
    for _ in range(rounds):
        tables = np.stack([columns[labels == k].sum(axis=0) for k in range(count)]) + 0.5
        moved = (-(columns @ np.log2(tables / tables.sum(axis=1, keepdims=True)).T)).argmin(axis=1)
        if (moved == labels).all():
            break
        labels = moved
    return labels


def _classes_cost(columns: np.ndarray, labels: np.ndarray, count: int) -> float:
    """Bits of the columns under their classes' empirical tables, plus the tables' and classes' bytes (about
    1.5 bytes a table entry): what picks how many classes a stream's bit width gets."""
    bits = 0.0
    for k in range(count):
        n = columns[labels == k].sum(axis=0)
        n = n[n > 0]
        bits += float((n * np.log2(n.sum() / n)).sum()) + 8 * (4 + 1.5 * n.size)
    return bits + (4 * labels.size if count > 1 else 0)


def column_classes(shapes, matrices, symbols, rounds: int = LLOYD_ROUNDS) -> tuple[list[np.ndarray], list[bool]]:
    """Column classes that code well, and whether each matrix stores them. Per bit width of the stream, for
    1, 2, 4, 8 and 16 classes: starting from equal-count bins of the columns' relative rms, each column moves
    to the class whose table codes its symbols in the fewest bits, and the tables are re-estimated (Lloyd
    iterations on the columns' histograms); the count that costs least with its tables and classes wins (wide
    alphabets, int8, pay more per table). A matrix whose columns are too short to pay for their 4 bits each
    (a vector, a few rows) puts them all in its one best class and stores none. Only the encoder does this."""
    out = [np.zeros(shape[1], dtype=np.uint8) for shape in shapes]
    stored = [False] * len(shapes)
    for b in sorted({shape[2] for shape in shapes}):
        members = [i for i, shape in enumerate(shapes) if shape[2] == b and shape[0] * shape[1] > 0]
        hists = {i: np.bincount((np.arange(symbols[i].size) % shapes[i][1]) * 256 + symbols[i],
                                minlength=shapes[i][1] * 256).reshape(shapes[i][1], 256).astype(np.float64) for i in members}
        tall = [i for i in members if shapes[i][0] >= MIN_CLASS_ROWS]  # shorter columns would overfit their class
        log_tables = np.zeros((COLUMN_CLASSES, 256))
        if tall:
            columns = np.concatenate([hists[i] for i in tall])
            rms = np.concatenate([_relative_column_rms(matrices[i]) for i in tall])
            options = {count: _lloyd(columns, rms, count, rounds) for count in (1, 2, 4, 8, COLUMN_CLASSES)}
            count = min(options, key=lambda c: _classes_cost(columns, options[c], c))
            labels = options[count]
            tables = np.stack([columns[labels == k].sum(axis=0) for k in range(COLUMN_CLASSES)]) + 0.5
            log_tables = np.log2(tables / tables.sum(axis=1, keepdims=True))
            start = np.cumsum([0] + [shapes[i][1] for i in tall])
            for i, lo, hi in zip(tall, start[:-1], start[1:]):
                cost = -(hists[i] @ log_tables.T)
                best = int(cost.sum(axis=0).argmin())
                stored[i] = count > 1 and bool(cost[np.arange(hi - lo), labels[lo:hi]].sum() + 4 * (hi - lo) < cost[:, best].sum())
                out[i] = labels[lo:hi].astype(np.uint8) if stored[i] else np.full(hi - lo, best, np.uint8)
        for i in members:
            if i not in tall:
                out[i] = np.full(shapes[i][1], int((-(hists[i].sum(axis=0) @ log_tables.T)).argmin()), np.uint8)
    return out, stored


def _normalise(counts: np.ndarray, total: int) -> np.ndarray:
    """Frequencies summing to `total`, every counted symbol at least 1, close to counts * total / sum."""
    used = counts > 0
    freq = np.zeros(counts.size, dtype=np.int64)
    freq[used] = np.maximum(1, np.floor(counts[used] * total / counts.sum())).astype(np.int64)
    while freq.sum() != total:  # hand the rounding error to the symbols it costs least
        excess = int(freq.sum() - total)
        if excess > 0:
            can = np.flatnonzero(freq > 1)
            cost = counts[can] * (np.log2(freq[can]) - np.log2(freq[can] - 1))
            take = can[np.argsort(cost, kind="stable")[:excess]]
            freq[take] -= 1
        else:
            gain = np.where(used, counts * (np.log2(freq + 1) - np.log2(np.maximum(freq, 1))), -1.0)
            give = np.argsort(-gain, kind="stable")[:-excess]
            freq[give] += 1
    return freq


def _leb128(values: np.ndarray) -> bytes:
    out = bytearray()
    for v in values.tolist():
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


class _Reader:
    """Bounds-checked reads from the coded bytes: every overrun is an EntropyCodecError."""

    def __init__(self, blob: bytes):
        self.blob, self.pos = memoryview(blob), 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.blob):
            raise EntropyCodecError(f"coded stream is truncated in its {what}")
        part = self.blob[self.pos : self.pos + n]
        self.pos += n
        return part

    def unpack(self, fmt: struct.Struct, what: str) -> tuple:
        return fmt.unpack(self.take(fmt.size, what))

    def leb128(self, what: str) -> int:
        value = shift = 0
        while True:
            byte = self.take(1, what)[0]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
            if shift > 28:
                raise EntropyCodecError(f"coded stream has an overlong number in its {what}")


def _layout(total: int) -> tuple[int, int]:
    """(lanes, symbols per lane): every lane non-empty, the last one possibly shorter."""
    if total == 0:
        return 0, 0
    per = -(-total // -(-total // STEPS_PER_LANE))
    return -(-total // per), per


def _active(total: int, per: int, lanes: int, step: int) -> int:
    """How many lanes (a prefix) still have a symbol at `step`."""
    return min(lanes, -(-(total - step) // per))


def _contexts(shapes: list[tuple[int, int, int]], classes: list[np.ndarray], table_ids: dict) -> np.ndarray:
    """The table index of every symbol of the stream, in coding order (matrices, then rows, then columns)."""
    parts = []
    for (rows, cols, bits), col in zip(shapes, classes):
        lookup = np.array([table_ids.get((bits, b), -1) for b in range(256)], dtype=np.int32)
        parts.append(np.tile(lookup[col.astype(np.int64)], rows))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def _table_cost(counts: np.ndarray, prec: int) -> float:
    """Bits to code `counts` (tables x 256) with tables of precision 2^prec, table bytes included."""
    bits = 0.0
    for row in counts:
        if row.sum() == 0:
            continue
        freq = _normalise(row, 1 << prec)
        used = row > 0
        bits += float(-(row[used] * np.log2(freq[used] / (1 << prec))).sum())
        nz = np.flatnonzero(used)
        bits += 8 * (4 + len(_leb128(freq[nz[0] : nz[-1] + 1])))
    return bits


def encode_matrices(matrices: list[np.ndarray], bits: list[int], prec: int | None = None) -> bytes:
    """The coded bytes of integer matrices (2-D, or anything else as one row), each at its bit width 2..8."""
    if len(matrices) != len(bits):
        raise ValueError("one bit width per matrix")
    shapes, matrices_2d, symbols = [], [], []
    for q, b in zip(matrices, bits):
        if not 2 <= int(b) <= 8:
            raise EntropyCodecError(f"bit width {b} is outside 2..8")
        q2 = np.asarray(q) if np.ndim(q) == 2 else np.asarray(q).reshape(1, -1)
        shapes.append((q2.shape[0], q2.shape[1], int(b)))
        matrices_2d.append(q2)
        symbols.append(_symbols(q2, int(b)))
    classes, stored = column_classes(shapes, matrices_2d, symbols)
    # Tables only for the (bit width, class) pairs that hold symbols.
    every = {(b, c): (b - 2) * COLUMN_CLASSES + c for b in range(2, 9) for c in range(COLUMN_CLASSES)}
    sym = np.concatenate(symbols) if symbols else np.zeros(0, dtype=np.int64)
    held = np.bincount(_contexts(shapes, classes, every), minlength=len(every)) if sym.size else np.zeros(len(every), np.int64)
    keys = [key for key, i in every.items() if held[i] > 0]
    table_ids = {key: i for i, key in enumerate(keys)}
    ctx = _contexts(shapes, classes, table_ids)
    counts = np.bincount(ctx.astype(np.int64) * 256 + sym, minlength=len(keys) * 256).reshape(len(keys), 256)
    if prec is None:
        prec = min(PRECISIONS, key=lambda p: _table_cost(counts, p))
    freqs = np.stack([_normalise(row, 1 << prec) for row in counts]) if len(keys) else np.zeros((0, 256), np.int64)

    out = bytearray(_HEAD.pack(CODEC_MAGIC, CODEC_VERSION, prec, COLUMN_CLASSES, len(shapes)))
    for shape in shapes:
        out += _MATRIX.pack(*shape)
    out += struct.pack("<H", len(keys))
    for (b, c), freq in zip(keys, freqs):
        nz = np.flatnonzero(freq)
        out += bytes([b, c, nz[0], nz[-1] - nz[0] + 1]) + _leb128(freq[nz[0] : nz[-1] + 1])
    for col, own in zip(classes, stored):
        if not own:  # every column in one class
            out.append(int(col[0]) if col.size else 0)
            continue
        out.append(PER_COLUMN)
        padded = np.append(col, np.zeros(col.size % 2, np.uint8))
        out += (padded[0::2] | (padded[1::2] << 4)).astype(np.uint8).tobytes()
    lanes, per = _layout(sym.size)
    states, words = _rans_encode(sym, ctx, freqs, prec, lanes, per)
    out += struct.pack("<II", lanes, zlib.crc32(sym.astype(np.uint8).tobytes()))
    out += states.astype("<u4").tobytes() + words.astype("<u2").tobytes()
    return bytes(out)


def _rans_encode(sym: np.ndarray, ctx: np.ndarray, freqs: np.ndarray, prec: int, lanes: int, per: int):
    """Final lane states and the words in decoding order. Coding runs backwards, lanes in lockstep."""
    total = sym.size
    cum = np.concatenate([np.zeros((freqs.shape[0], 1), np.int64), np.cumsum(freqs, axis=1)[:, :-1]], axis=1)
    f_all = freqs[ctx, sym].astype(np.uint64) if total else np.zeros(0, np.uint64)
    c_all = cum[ctx, sym].astype(np.uint64) if total else np.zeros(0, np.uint64)
    x = np.full(lanes, RANS_LOW, dtype=np.uint64)
    start = np.arange(lanes, dtype=np.int64) * per
    emitted = [None] * per
    limit_base = np.uint64((RANS_LOW >> prec) << 16)
    for step in range(per - 1, -1, -1):
        n = _active(total, per, lanes, step)
        pos = start[:n] + step
        f, c, xs = f_all[pos], c_all[pos], x[:n]
        spill = xs >= limit_base * f
        emitted[step] = (xs[spill] & np.uint64(0xFFFF)).astype(np.uint16)
        xs = np.where(spill, xs >> np.uint64(16), xs)
        x[:n] = ((xs // f) << np.uint64(prec)) + (xs % f) + c
    words = np.concatenate(emitted) if per else np.zeros(0, np.uint16)
    return x, words


def decode_matrices(blob: bytes) -> list[np.ndarray]:
    """The int8 matrices coded by encode_matrices, bit for bit; EntropyCodecError on malformed bytes."""
    r = _Reader(blob)
    magic, version, prec, nclasses, count = r.unpack(_HEAD, "header")
    if magic != CODEC_MAGIC:
        raise EntropyCodecError("not an entropy-coded stream (wrong magic)")
    if version != CODEC_VERSION:
        raise EntropyCodecError(f"unsupported entropy codec version {version} (this code reads {CODEC_VERSION})")
    if prec not in PRECISIONS or nclasses != COLUMN_CLASSES:
        raise EntropyCodecError(f"coded stream has precision {prec} / {nclasses} classes, outside what this code writes")
    if count * _MATRIX.size > len(blob):
        raise EntropyCodecError("coded stream is truncated in its matrix list")
    shapes = [r.unpack(_MATRIX, "matrix list") for _ in range(count)]
    total = 0
    for rows, cols, b in shapes:
        if not 2 <= b <= 8:
            raise EntropyCodecError(f"coded stream names bit width {b}, outside 2..8")
        total += rows * cols
    if total > MAX_SYMBOLS:
        raise EntropyCodecError(f"coded stream claims {total:,} symbols, more than any model holds")
    (ntables,) = r.unpack(struct.Struct("<H"), "table count")
    freqs = np.zeros((ntables, 256), dtype=np.int64)
    table_ids = {}
    for t in range(ntables):
        b, c, first, n = r.take(4, "frequency tables")
        if (b, c) in table_ids or c >= nclasses or not 2 <= b <= 8 or n == 0 or first + n > (1 << b) - 1:
            raise EntropyCodecError(f"frequency table {t} is malformed")
        freqs[t, first : first + n] = [r.leb128("frequency tables") for _ in range(n)]
        if freqs[t].sum() != 1 << prec:
            raise EntropyCodecError(f"frequency table {t} does not sum to 2^{prec}")
        table_ids[(b, c)] = t
    classes = []
    for rows, cols, _ in shapes:
        (mode,) = r.take(1, "column classes")
        if mode != PER_COLUMN:
            if mode >= nclasses:
                raise EntropyCodecError(f"a matrix names column class {mode}, out of range")
            classes.append(np.full(cols, mode, np.uint8))
            continue
        packed = np.frombuffer(r.take((cols + 1) // 2, "column classes"), dtype=np.uint8)
        col = np.stack([packed & 0x0F, packed >> 4], axis=1).reshape(-1)[:cols]
        if (col >= nclasses).any() or (cols % 2 and packed[-1] >> 4):
            raise EntropyCodecError("a column class is out of range, or its padding is not zero")
        classes.append(col)
    ctx = _contexts(shapes, classes, table_ids)
    if (ctx < 0).any():
        raise EntropyCodecError("a column names a frequency table the stream does not hold")
    lanes, crc = r.unpack(struct.Struct("<II"), "lane header")
    expected_lanes, per = _layout(total)
    if lanes != expected_lanes:
        raise EntropyCodecError(f"coded stream has {lanes} lanes, not the {expected_lanes} its {total:,} symbols are coded with")
    states = np.frombuffer(r.take(4 * lanes, "lane states"), dtype="<u4").astype(np.uint64)
    rest = len(blob) - r.pos
    if rest % 2:
        raise EntropyCodecError("coded stream ends inside a word")
    words = np.frombuffer(r.take(rest, "words"), dtype="<u2").astype(np.uint64)
    sym = _rans_decode(states, words, ctx, freqs, prec, lanes, per, total)
    if zlib.crc32(sym.astype(np.uint8).tobytes()) != crc:
        raise EntropyCodecError("decoded symbols fail their checksum: the stream was altered")
    out, pos = [], 0
    for rows, cols, b in shapes:
        qmax = (1 << (b - 1)) - 1
        out.append((sym[pos : pos + rows * cols].astype(np.int16) - qmax).astype(np.int8).reshape(rows, cols))
        pos += rows * cols
    return out


def _rans_decode(x, words, ctx, freqs, prec, lanes, per, total) -> np.ndarray:
    if ((x < RANS_LOW) | (x >= 1 << 32)).any():
        raise EntropyCodecError("a lane state is out of range: the stream was altered")
    mask = (1 << prec) - 1
    cum = np.concatenate([np.zeros((freqs.shape[0], 1), np.int64), np.cumsum(freqs, axis=1)], axis=1)
    # slot -> symbol for every table, flattened: table t's slot s is at t << prec | s.
    slot_symbol = np.concatenate([np.repeat(np.arange(256, dtype=np.int64), row) for row in freqs]) \
        if len(freqs) else np.zeros(0, np.int64)
    f_flat, c_flat = freqs.reshape(-1).astype(np.uint64), cum[:, :-1].reshape(-1).astype(np.uint64)
    sym = np.zeros(total, dtype=np.uint8)
    start = np.arange(lanes, dtype=np.int64) * per
    read = 0
    for step in range(per):
        n = _active(total, per, lanes, step)
        pos = start[:n] + step
        xs = x[:n]
        slot = (xs & np.uint64(mask)).astype(np.int64)
        t = ctx[pos].astype(np.int64)
        s = slot_symbol[(t << prec) | slot]
        sym[pos] = s
        k = (t << 8) | s
        xs = f_flat[k] * (xs >> np.uint64(prec)) + slot.astype(np.uint64) - c_flat[k]
        low = np.flatnonzero(xs < RANS_LOW)
        if read + low.size > words.size:
            raise EntropyCodecError("coded stream is truncated: it runs out of words")
        xs[low] = (xs[low] << np.uint64(16)) | words[read : read + low.size]
        read += low.size
        x[:n] = xs
    if read != words.size or (x != RANS_LOW).any():
        raise EntropyCodecError("coded stream does not end where its symbols do: it was altered or padded")
    return sym


def encode_frame(raw: bytes, matrices: list[tuple[int, np.ndarray, int]], level: int) -> bytes:
    """One artifact frame (pgolf/artifact.py, compressor "rans"): the integer matrices lying in `raw`,
    given as (byte offset, int8 symbols, bit width) in increasing offset, coded by encode_matrices; the
    bytes around them (scales, float tensors, the directory) by zstd at `level`.
    Layout: LEB128 length of the coded matrices (0 = none) | coded matrices | per matrix, LEB128 gap from
    the previous matrix's end to its offset | zstd frame of the other bytes."""
    rest, gaps, end = [], [], 0
    for offset, q, _ in matrices:
        data = np.ascontiguousarray(q, dtype=np.int8).tobytes()
        if offset < end or raw[offset : offset + len(data)] != data:
            raise EntropyCodecError(f"matrix at byte {offset} does not lie in the frame as given")
        rest.append(raw[end:offset])
        gaps.append(offset - end)
        end = offset + len(data)
    rest.append(raw[end:])
    coded = encode_matrices([q for _, q, _ in matrices], [b for _, _, b in matrices]) if matrices else b""
    return _leb128(np.array([len(coded)])) + coded + _leb128(np.array(gaps, dtype=np.int64)) + \
        zstandard.ZstdCompressor(level=level).compress(b"".join(rest))


def decode_frame(blob: bytes, raw_len: int) -> bytes:
    """The `raw_len` bytes a frame of encode_frame holds; EntropyCodecError if they do not add up."""
    r = _Reader(blob)
    coded_len = r.leb128("frame header")
    matrices = decode_matrices(bytes(r.take(coded_len, "coded matrices"))) if coded_len else []
    gaps = [r.leb128("matrix offsets") for _ in matrices]
    sizes = [q.size for q in matrices]
    rest_len = raw_len - sum(sizes)  # the gaps are part of the other bytes
    if rest_len < sum(gaps):
        raise EntropyCodecError(f"frame holds more than its {raw_len:,} bytes")
    try:
        rest = zstandard.ZstdDecompressor().decompress(bytes(r.take(len(blob) - r.pos, "frame")), max_output_size=rest_len)
    except zstandard.ZstdError as exc:
        raise EntropyCodecError(f"frame's other bytes are corrupt ({exc})") from None
    if len(rest) != rest_len:
        raise EntropyCodecError(f"frame's other bytes are {len(rest):,}, not the {rest_len:,} its size leaves")
    out, pos = bytearray(), 0
    for gap, q in zip(gaps, matrices):
        out += rest[pos : pos + gap] + q.tobytes()
        pos += gap
    return bytes(out + rest[pos:])

