"""Bytes of quantized weight symbols per tensor group under each coder, against their order-0 entropy.

Quantizes every matrix of a checkpoint (embedding included) at int6, clip 12.85 x row std (per-row
fp16 scales, pgolf/quant.py via quantize_state_dict), and codes each tensor group's symbols as the
artifact would: the group's int8 arrays concatenated, through zstd-22 and lzma-9 (pgolf/artifact.py's
compress), brotli-11 (if importable), and pgolf/entropy_codec.py (one stream per group, its header,
tables and column classes counted). Order-0 entropy is per matrix (each its own distribution), as
pgolf/quant.py's symbol_entropy_bits. Row scales are the same for every coder and not counted.
Each table twice: the MLP hidden units as trained, and in pgolf/row_order.py's similar order (the
packer keeps whichever codes smaller; the whole-file line shows what it keeps). Then times the codec on a stream of about --speed-symbols symbols (the checkpoints' matrices repeated).

    python bench/codec_bytes.py [CHECKPOINT ...] [--bits 6] [--clip 12.85] [--speed-symbols 16000000]
"""

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pgolf.artifact import compress, pack  # noqa: E402
from pgolf.checkpoint import load_any_checkpoint  # noqa: E402
from pgolf.config import QuantConfig  # noqa: E402
from pgolf.entropy_codec import decode_matrices, encode_matrices  # noqa: E402
from pgolf.quant import symbol_entropy_bits, tensor_group  # noqa: E402
from pgolf.row_order import similar_order  # noqa: E402
from pgolf.storage import quantize_state_dict  # noqa: E402

try:
    import brotli
except ImportError:  # an optional extra (pyproject: pgolf[brotli])
    brotli = None

DEFAULT_CHECKPOINTS = ("/work/shared/data/official_tiny/final_model.pt", "/tmp/ref/tiny_before/checkpoint.pgolf")
GROUPS = ("embedding", "attention", "mlp", "other")


def coders() -> dict:
    """name -> function(list of int entries) -> coded bytes."""
    def raw(entries):
        return b"".join(np.ascontiguousarray(e.q).tobytes() for e in entries)

    table = {
        "zstd-22": lambda entries: compress(raw(entries), "zstd", 22),
        "lzma-9": lambda entries: compress(raw(entries), "lzma", 9),
    }
    if brotli is not None:
        table["brotli-11"] = lambda entries: brotli.compress(raw(entries), quality=11, lgwin=24)
    table["entropy_codec"] = lambda entries: encode_matrices([e.q for e in entries], [e.bits for e in entries])
    return table


def measure(path: str, bits: int, clip: float) -> list:
    model, _ = load_any_checkpoint(path)
    quant = QuantConfig(bits={"*": bits}, clip={"*": clip}, keep_float_max_numel=0)
    stored = [e for e in quantize_state_dict(model.state_dict(), quant) if e.kind == "int"]
    rows = {}
    for order, entries_of in (("as trained", lambda s: s), ("MLP units in the similar order", similar_order)):
        rows[order] = []
        for group in GROUPS:
            entries = [e for e in entries_of(stored) if tensor_group(e.name) == group]
            if not entries:
                continue
            h = symbol_entropy_bits(entries) / 8
            sizes = {name: len(code(entries)) for name, code in coders().items()}
            rows[order].append((group, sum(e.q.size for e in entries), h, sizes))
    back = decode_matrices(encode_matrices([e.q for e in stored], [e.bits for e in stored]))
    assert all(np.array_equal(e.q.reshape(q.shape), q) for e, q in zip(stored, back)), "codec round trip differs"
    every = quantize_state_dict(model.state_dict(), quant)  # the whole model file: scales, control tensors, directory
    files = {f"{c}-{level}{label}": len(pack(every, {}, c, level, alternatives)[0])
             for c, level in (("zstd", 22), ("lzma", 9), ("rans", 22)) + ((("brotli", 11),) if brotli else ())
             for label, alternatives in (("", ()), (" row_order=similar", [similar_order(every)]))}
    return rows, stored, files


def print_table(title: str, rows: list) -> None:
    names = list(rows[0][3])
    print(f"\n{title}")
    print("| group | symbols | order-0 bytes | " + " | ".join(f"{n} bytes (x order-0)" for n in names) + " |")
    print("|---|---:|---:|" + "---:|" * len(names))
    totals = {n: 0 for n in names}
    for group, count, h, sizes in rows:
        print(f"| {group} | {count:,} | {h:,.0f} | " + " | ".join(f"{sizes[n]:,} ({sizes[n] / h:.4f})" for n in names) + " |")
        for n in names:
            totals[n] += sizes[n]
    count, h = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"| **all** | {count:,} | {h:,.0f} | " + " | ".join(f"**{totals[n]:,} ({totals[n] / h:.4f})**" for n in names) + " |")


def time_codec(stored: list, target: int) -> None:
    mats, bits, count = [], [], 0
    while count < target:
        for e in stored:
            mats.append(e.q)
            bits.append(e.bits)
            count += e.q.size
    start = time.perf_counter()
    blob = encode_matrices(mats, bits)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    back = decode_matrices(blob)
    decode_s = time.perf_counter() - start
    assert all(np.array_equal(a.reshape(b.shape), b) for a, b in zip(mats, back))
    m = count / 1e6
    print(f"\nentropy_codec speed, one stream of {count:,} symbols ({len(blob):,} bytes), this process's one core: "
          f"encode {encode_s:.2f} s ({encode_s / m:.3f} s per M symbols), decode {decode_s:.2f} s ({decode_s / m:.3f} s per M symbols)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", default=list(DEFAULT_CHECKPOINTS))
    parser.add_argument("--bits", type=int, default=6)
    parser.add_argument("--clip", type=float, default=12.85)
    parser.add_argument("--speed-symbols", type=int, default=16_000_000, help="0 = skip the timing")
    args = parser.parse_args()
    if brotli is None:
        print("brotli is not installed (pip install 'pgolf[brotli]'): its column is left out")
    stored = []
    for path in args.checkpoints:
        rows, stored, files = measure(path, args.bits, args.clip)
        for order, table in rows.items():
            print_table(f"{path}: int{args.bits}, clip {args.clip:g} x row std, every matrix, {order}", table)
        print("model file (pgolf/artifact.py pack, all frames): " + ", ".join(f"{k} {v:,} bytes" for k, v in files.items()))
    if args.speed_symbols and stored:
        time_codec(stored, args.speed_symbols)


if __name__ == "__main__":
    main()
