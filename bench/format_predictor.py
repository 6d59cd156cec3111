"""The byte predictor on the matrix formats of pgolf/storage.py: predicted vs real model-file bytes of one
trained checkpoint stored under each format, with the predictor's calibration measured on that same
checkpoint (as a study measures it on its own trials), so only the format terms are under test.
Also prints the per-format constants the real files imply (objectives/bytes.py Calibration defaults).

    python bench/format_predictor.py [CHECKPOINT]   (default: ../shared/data/official_tiny/final_model.pt)
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from objectives.bytes import Calibration, measure_calibration, predict_model_bytes  # noqa: E402
from pgolf.artifact import pack  # noqa: E402
from pgolf.checkpoint import load_any_checkpoint  # noqa: E402
from pgolf.config import QuantConfig  # noqa: E402
from pgolf.datasets import default_data_root  # noqa: E402
from pgolf.gptq import calibration_batches, collect_hessians  # noqa: E402
from pgolf.storage import outlier_count, quantize_state_dict  # noqa: E402

BITS, CLIP = 5, 12.85
FORMATS = {
    "rtn": {},
    "gptq": {"quantizer": {"*": "gptq"}},
    "awq 0.5": {"awq": {"*": 0.5}},
    "outliers 0.001": {"outliers": {"*": 0.001}},
    "outliers 0.005": {"outliers": {"*": 0.005}},
    "rank 4": {"rank": {"*": 4}},
    "rank 16": {"rank": {"*": 16}},
    "rank 16 int8": {"rank": {"*": 16}, "rank_bits": 8},
    "gptq + awq + outliers 0.005 + rank 4": {"quantizer": {"*": "gptq"}, "awq": {"*": 0.5}, "outliers": {"*": 0.005}, "rank": {"*": 4}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", default=os.path.join(default_data_root(), "official_tiny", "final_model.pt"),
                        help="a trained checkpoint")
    path = parser.parse_args().path
    model, config = load_any_checkpoint(path, seq_len=256)
    model = model.float()
    train = os.path.join(default_data_root(), "datasets", "fineweb_sample_sp1024", "fineweb_train_*.bin")
    hessians, rows = collect_hessians(model, calibration_batches(train, config.model.vocab_size, 256, 65_536))
    state = model.state_dict()
    calibration = Calibration(**measure_calibration(state, [BITS], [CLIP]))
    matrices = [n for n, t in state.items() if t.ndim == 2 and t.numel() > 65_536]
    weights = sum(state[n].numel() for n in matrices)
    print(f"{path}: {len(matrices)} matrices, {weights:,} weights, stored at int{BITS} clip {CLIP}")
    print(f"{'format':<40} {'real':>10} {'predicted':>10} {'error':>7} {'seconds':>8}")
    real = {}
    for label, extra in FORMATS.items():
        quant = QuantConfig(bits={"*": BITS}, clip={"*": CLIP}, **extra)
        started = time.perf_counter()
        blob, _ = pack(quantize_state_dict(state, quant, hessians, rows), {"model": {}}, "zstd", 22)
        seconds = time.perf_counter() - started
        real[label] = len(blob)
        predicted = predict_model_bytes(config.model, quant, calibration)
        print(f"{label:<40} {len(blob):>10,} {predicted:>10,} {(predicted - len(blob)) / len(blob):>+7.2%} {seconds:>8.1f}")
    kept = sum(outlier_count(state[n].numel(), 0.005) for n in matrices)
    factors = sum(16 * sum(state[n].shape) for n in matrices)
    print("implied constants: "
          f"gptq bits ratio {(real['gptq'] - 0.0) / real['rtn']:.3f} (whole file), "
          f"outlier bytes {(real['outliers 0.005'] - real['rtn']) / kept:.2f} per kept weight, "
          f"factor bytes {(real['rank 16'] - real['rtn']) / factors:.2f} (fp16) / {(real['rank 16 int8'] - real['rtn']) / factors:.2f} (int8) per value")


if __name__ == "__main__":
    main()
