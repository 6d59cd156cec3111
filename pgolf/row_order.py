"""Free row orderings (quant.row_order = "similar"): an MLP's hidden units stored in the order that codes smallest.

A hidden unit is a row of `mlp.fc` with the matching column of `mlp.proj`; permuting the units leaves the function
unchanged, so the order they are stored in is free. The packer (pgolf/artifact.py's `pack`, given `similar_order`'s
result as an alternative) codes them as trained and in a chain where each unit is followed by its nearest remaining
unit in L1 distance of its symbols, and keeps whichever file is smaller. The order is not stored: fp32 sums over the
hidden units in another order round differently, so a loader that kept the stored order would score a few ulps away
depending on which order won. The loader puts every such MLP's units in one canonical order instead (lexicographic in
their stored values), so a model file scores the same to the last bit whichever order it holds.

A block is reordered only where its MLP stores exactly those two matrices as plain integer symbols with per-row scales
(no format arrays, no per-repeat deltas: they would need permuting too).
"""

import dataclasses

import numpy as np
import torch

from pgolf.artifact import EXTRA_ROLES
from pgolf.quant import StoredTensor


def _plain_int_matrix(entry: StoredTensor) -> bool:
    return entry.kind == "int" and entry.q is not None and entry.q.ndim == 2 and entry.scale is not None \
        and entry.scale.shape == (entry.q.shape[0],) and all(getattr(entry, role) is None for role in EXTRA_ROLES)


def unit_pairs(stored: list[StoredTensor]) -> list[tuple[int, int]]:
    """(index of mlp.fc, index of mlp.proj) in `stored` for each MLP whose hidden units can be reordered."""
    index = {entry.name: i for i, entry in enumerate(stored)}
    pairs = []
    for name, i in index.items():
        if not name.endswith(".mlp.fc.weight"):
            continue
        prefix = name[: -len("fc.weight")]
        j = index.get(prefix + "proj.weight")
        if j is None or {n for n in index if n.startswith(prefix)} != {name, prefix + "proj.weight"}:
            continue
        fc, proj = stored[i], stored[j]
        if _plain_int_matrix(fc) and _plain_int_matrix(proj) and fc.q.shape[0] == proj.q.shape[1]:
            pairs.append((i, j))
    return pairs


def _units(fc: StoredTensor, proj: StoredTensor) -> np.ndarray:
    """One row per hidden unit: its fc symbols, its fc row scale's bits, its proj column's symbols."""
    scale_bits = np.ascontiguousarray(fc.scale).view(f"u{fc.scale.dtype.itemsize}")  # any stored dtype: its bits
    return np.concatenate([fc.q.astype(np.int64), scale_bits.astype(np.int64)[:, None], proj.q.T.astype(np.int64)], axis=1)


def _permuted(stored: list[StoredTensor], orders: dict) -> list[StoredTensor]:
    """stored with each pair's units in orders[(fc index, proj index)] (a copy; the input is not changed)."""
    out = list(stored)
    for (i, j), order in orders.items():
        fc, proj = stored[i], stored[j]
        out[i] = dataclasses.replace(fc, q=np.ascontiguousarray(fc.q[order]), scale=np.ascontiguousarray(fc.scale[order]))
        out[j] = dataclasses.replace(proj, q=np.ascontiguousarray(proj.q[:, order]))
    return out


def nearest_neighbour_chain(points: np.ndarray) -> np.ndarray:
    """An order of the rows of `points` (integers) starting from the row nearest the origin, each followed by the
    nearest row not yet taken (L1 distance, exact in fp32 for int6 symbols; ties to the lower index)."""
    x = torch.from_numpy(points.astype(np.float32))
    distance = torch.cdist(x, x, p=1).numpy()
    n = len(points)
    taken = np.zeros(n, dtype=bool)
    order = np.empty(n, dtype=np.int64)
    order[0] = int(np.abs(points).sum(axis=1).argmin())
    for k in range(1, n):
        taken[order[k - 1]] = True
        row = np.where(taken, np.inf, distance[order[k - 1]])
        order[k] = int(row.argmin())
    return order


def similar_order(stored: list[StoredTensor]) -> list[StoredTensor]:
    """stored with each reorderable MLP's units in a nearest-neighbour chain of their symbols."""
    orders = {}
    for i, j in unit_pairs(stored):
        symbols = np.concatenate([stored[i].q, stored[j].q.T], axis=1)
        orders[(i, j)] = nearest_neighbour_chain(symbols)
    return _permuted(stored, orders)


def canonical_order(stored: list[StoredTensor]) -> list[StoredTensor]:
    """stored with each reorderable MLP's units in lexicographic order of their stored values: the order a loader
    gives them whatever order the file holds (units equal in every value are interchangeable to the last bit)."""
    orders = {}
    for i, j in unit_pairs(stored):
        keys = _units(stored[i], stored[j])
        orders[(i, j)] = np.lexsort(keys.T[::-1])
    return _permuted(stored, orders)
