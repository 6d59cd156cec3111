"""Measure the byte predictor's default calibration on real trained weights.

Writes objectives/calibration.json: compressed bits per weight for each (role, bits, clip) the shipped
presets can choose, plus fp16 and per-row-scale costs, measured on a trained checkpoint (default: the
official recipe's checkpoint in ../shared/data/official_tiny). Studies refine it from their own trials.

    python bench/calibrate_predictor.py [CHECKPOINT.pt | RUN_DIR/checkpoint.pgolf]
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from objectives.bytes import DEFAULT_CALIBRATION, measure_calibration  # noqa: E402
from pgolf.checkpoint import load_checkpoint  # noqa: E402
from pgolf.datasets import default_data_root  # noqa: E402
from space.spec import load_space, presets  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", default=os.path.join(default_data_root(), "official_tiny", "final_model.pt"),
                        help="a trained checkpoint: an official .pt or a pgolf run's checkpoint.pgolf")
    source = parser.parse_args().source
    if source.endswith(".pgolf"):
        state = load_checkpoint(source)[0].state_dict()
    else:
        state = torch.load(source, weights_only=True, map_location="cpu")
    bits, clips = set(), set()
    for name in presets():
        alloc = load_space(name).allocation
        bits |= set(alloc.bits) | set(alloc.embedding_bits)
        clips |= set(alloc.clip)
    measured = measure_calibration(state, sorted(bits), sorted(clips))
    measured["observations"] = 1
    with open(DEFAULT_CALIBRATION, "w", encoding="utf-8") as f:
        json.dump(measured, f, indent=1, sort_keys=True)
    print(f"measured on {source}: {len(measured['bits_per_weight'])} (role, bits, clip) entries -> {DEFAULT_CALIBRATION}")
    for key, value in sorted(measured["bits_per_weight"].items()):
        print(f"  {key:22s} {value:.3f} bits/weight")
    print(f"  fp16 {measured['fp16_bytes_per_value']:.3f} bytes/value, scales {measured['scale_bytes_per_row']:.3f} bytes/row")


if __name__ == "__main__":
    main()
