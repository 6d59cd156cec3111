"""How far context modelling could take pgolf/entropy_codec.py below order-0: ideal code lengths (every table free,
so a bound the real coder stays above) of a checkpoint's int6 symbols (clip 12.85 x row std, every matrix, the
embedding included) under the codec's column classes and richer contexts built on them: the previous symbol in the
row, the symbol above in the column (magnitudes 0, 1, 2, 3+), and 8 row classes by the row's symbol rms.

    python bench/codec_contexts.py [CHECKPOINT]      (default: ../shared/data/official_tiny/final_model.pt)
"""
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pgolf.checkpoint import load_any_checkpoint  # noqa: E402
from pgolf.config import QuantConfig  # noqa: E402
from pgolf.datasets import default_data_root  # noqa: E402
from pgolf.entropy_codec import _symbols, column_classes  # noqa: E402
from pgolf.storage import quantize_state_dict  # noqa: E402

def cond_bits(sym, ctx):
    """Ideal bits of the symbols under the empirical distribution of each context (tables free)."""
    key = ctx.astype(np.int64) * 256 + sym
    counts = np.bincount(key)
    tot = np.bincount(ctx.astype(np.int64))
    c = counts[key]; t = tot[ctx]
    return float(-np.log2(c / t).sum())

path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(default_data_root(), "official_tiny", "final_model.pt")
model, _ = load_any_checkpoint(path)
stored = [e for e in quantize_state_dict(model.state_dict(), QuantConfig(bits={"*": 6}, clip={"*": 12.85}, keep_float_max_numel=0)) if e.kind == "int"]
mats = [np.asarray(e.q).reshape(e.q.shape[0], -1) for e in stored]
bits = [e.bits for e in stored]
syms = [_symbols(m, b) for m, b in zip(mats, bits)]
shapes = [(m.shape[0], m.shape[1], b) for m, b in zip(mats, bits)]
classes, _ = column_classes(shapes, mats, syms)
h0 = sum(cond_bits(s, np.zeros(s.size, np.int64)) for s in syms)
# contexts over one shared table set across matrices (as the codec does: per (bits, class))
S = np.concatenate(syms)
C = np.concatenate([np.tile(c.astype(np.int64), m.shape[0]) for c, m in zip(classes, mats)])
P, R, A = [], [], []
for m, s in zip(mats, syms):
    q = np.abs(m.astype(np.int64))
    prev = np.zeros_like(q); prev[:, 1:] = q[:, :-1]
    P.append(np.minimum(prev, 3).reshape(-1))
    above = np.zeros_like(q); above[1:, :] = q[:-1, :]
    A.append(np.minimum(above, 3).reshape(-1))
    rms = np.sqrt((m.astype(np.float64) ** 2).mean(axis=1))
    edges = np.quantile(rms, np.linspace(0, 1, 9)[1:-1])
    R.append(np.repeat(np.searchsorted(edges, rms), m.shape[1]))
P, R, A = map(np.concatenate, (P, R, A))
print(f"symbols {S.size:,}, order-0 (per matrix) {h0/8:,.0f} bytes")
for label, ctx in (("column class", C), ("col class x |prev| (0,1,2,3+)", C * 4 + P), ("col class x |above| (0,1,2,3+)", C * 4 + A),
                   ("col class x row class (8 by row rms)", C * 8 + R), ("col class x |prev| x row class", (C * 4 + P) * 8 + R)):
    b = cond_bits(S, ctx)
    print(f"{label}: {b / h0:.4f} x order-0 (tables free; contexts {len(np.unique(ctx))})")
