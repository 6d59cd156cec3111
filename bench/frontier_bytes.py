"""What the compressed code and the rans codec free at the `frontier` shape (issue 31, "what it buys"): its baseline
trial's model stored as the byte predictor puts it under the 16 MB cap (int6 matrices at clip 12.85, an int7
embedding at clip 14, per-row scales) and packed for real with each compressor; its train_gpt.py counted plain and
compressed. The bytes freed are then priced in int6 weights at the rate rans stores this model's int6 matrices.

    python bench/frontier_bytes.py [--seed 0] [--compressors zstd,lzma,rans]

No trained frontier checkpoint exists here, and at initialisation its output projections are zero (they would code
to almost nothing), so every matrix is drawn i.i.d. Gaussian: each row quantizes to the same symbol distribution
as a trained near-Gaussian matrix (official_tiny's int6 symbols: 3.326 bits of order-0 entropy), but without the
per-column structure rans models (on real checkpoints rans stores 2.6-2.7% fewer bytes than zstd; here the
difference is only zstd's own overhead). A lower bound on what rans frees.
"""

import argparse
import dataclasses
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from counted_code import baseline_config  # noqa: E402
from pgolf.assemble import code_bytes  # noqa: E402
from pgolf.config import config_to_dict  # noqa: E402
from pgolf.model import GPT  # noqa: E402
from pgolf.quant import tensor_group  # noqa: E402
from pgolf.storage import quantize_state_dict  # noqa: E402
from pgolf.submission import pack_stored  # noqa: E402
from space.spec import load_space  # noqa: E402

EMBEDDING = "tok_emb.*"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compressors", default="zstd,lzma,rans")
    args = parser.parse_args()
    config = baseline_config(load_space("frontier"))
    quant = dataclasses.replace(config.quant, bits={"*": 6, EMBEDDING: 7}, clip={"*": 12.85, EMBEDDING: 14.0})
    config = dataclasses.replace(config, quant=quant)
    torch.manual_seed(args.seed)
    state = {k: torch.randn_like(v) if v.dim() == 2 else v.detach() for k, v in GPT(config.model).state_dict().items()}
    started = time.perf_counter()
    stored = quantize_state_dict(state, config.quant)
    print(f"frontier baseline: {sum(v.numel() for v in state.values()):,} parameters, quantized in {time.perf_counter() - started:.1f} s")
    rows = {}
    for compressor in args.compressors.split(","):
        trial = dataclasses.replace(config, quant=dataclasses.replace(config.quant, compressor=compressor,
                                                                      level=9 if compressor == "lzma" else 22))
        started = time.perf_counter()
        blob, groups = pack_stored(stored, trial)
        seconds = time.perf_counter() - started
        plain, compressed = (code_bytes(config_to_dict(dataclasses.replace(trial, quant=dataclasses.replace(trial.quant, code=form))))
                             for form in ("plain", "compressed"))
        rows[compressor] = (len(blob), plain, compressed, groups, seconds)
    print("| compressor | model file | code plain | code compressed | total plain code | total compressed code | pack s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for compressor, (model_bytes, plain, compressed, _, seconds) in rows.items():
        print(f"| {compressor} | {model_bytes:,} | {plain:,} | {compressed:,} | {model_bytes + plain:,} | {model_bytes + compressed:,} | {seconds:.1f} |")
    if "zstd" in rows and "rans" in rows:
        before = rows["zstd"][0] + rows["zstd"][1]
        after = rows["rans"][0] + rows["rans"][2]
        blocks = ("attention", "mlp")  # the int6 block matrices' groups
        symbols = sum(int(e.q.size) for e in stored if e.q is not None and tensor_group(e.name) in blocks)
        assert all(e.bits == 6 for e in stored if e.q is not None and tensor_group(e.name) in blocks)
        int6_bytes = sum(rows["rans"][3][g] for g in blocks)
        per_weight = int6_bytes / max(symbols, 1)
        print(f"freed by compressed code + rans against plain code + zstd: {before - after:,} bytes "
              f"({rows['zstd'][1] - rows['rans'][2]:,} code, {rows['zstd'][0] - rows['rans'][0]:,} model file); "
              f"rans stores the int6 block groups at {8 * per_weight:.3f} bits per weight (scales included): "
              f"the bytes pay for {(before - after) / per_weight:,.0f} more int6 weights")


if __name__ == "__main__":
    main()
