"""Does the rate term buy bpb at a fixed byte cap? The `tiny` QAT arms of bench/qat_pairs.py (B = QAT at
int5 over the last 30%, C / D = B + rate_lambda), each checkpoint given to the post-training allocation at
the same total cap, paired over seeds:

  * own allocation: the knapsack on each arm's checkpoint at --cap (RTN, widths 3-8, clip 8 x row std, the
    embedding 5-8) -> artifact bytes and post-roundtrip bpb. The rate term pays off here only if the bytes
    it saves buy more than its training loss costs.
  * same allocation: the storage B's knapsack chose, applied unchanged to C and D -> model bytes and bpb
    (what the rate term saves at a fixed format).

Runs are reused from --runs (bench/qat_pairs.py's folder); 200 steps, no wallclock cap, so load does not
change a figure. Writes bench/out/rate_at_cap.txt.

    python bench/rate_at_cap.py [--seeds 1337 1338 1339] [--lambdas 5 15] [--cap 800000]
"""

import argparse
import dataclasses
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.qat_pairs import HERE, paired, run_arm  # noqa: E402
from pgolf.checkpoint import load_any_checkpoint  # noqa: E402
from pgolf.config import config_from_dict  # noqa: E402
from pgolf.datasets import default_data_root, resolve_data  # noqa: E402
from pgolf.submission import export_model, load_model, score, setup_runtime  # noqa: E402
from search.allocation.command import allocate_checkpoint  # noqa: E402

OPTIONS = {"bits": [3, 4, 5, 6, 8], "embedding_bits": [5, 6, 8], "clip": [8.0], "eval_stride": [0],
           "compressors": ["zstd"]}


def same_allocation(run_dir: str, quant: dict, data, runtime) -> tuple[int, float]:
    """Model bytes and post-roundtrip bpb of a checkpoint stored with a given [quant] section."""
    model, config = load_any_checkpoint(run_dir, 256, runtime.device)
    config = dataclasses.replace(config, quant=config_from_dict({"quant": quant}).quant, eval=config.resolved_eval())
    blob, _, _ = export_model(model, config)
    fresh, _, eval_cfg = load_model(blob, runtime.device)
    return len(blob), score(fresh, eval_cfg, data.val_pattern, data.tokenizer, runtime).bpb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338, 1339])
    parser.add_argument("--lambdas", type=float, nargs=2, default=[5.0, 15.0], metavar=("C", "D"))
    parser.add_argument("--clip", type=float, default=8.0)
    parser.add_argument("--cap", type=int, default=800_000, help="total artifact bytes (code included)")
    parser.add_argument("--runs", default=os.path.join(HERE, "out", "qat_runs"))
    parser.add_argument("--data", default=default_data_root())
    args = parser.parse_args()
    lambdas = {"C": args.lambdas[0], "D": args.lambdas[1]}
    runtime = setup_runtime("cpu")
    rows = {}
    for seed in args.seeds:
        for arm in ("B", "C", "D"):
            run_arm(arm, seed, args.clip, lambdas, args.runs, args.data)
            run_dir = os.path.join(args.runs, f"{arm}-{seed}")
            out = os.path.join(HERE, "out", "rate_at_cap", f"{arm}-{seed}")
            print(f"allocating {arm} seed {seed} at {args.cap:,} bytes ...", flush=True)
            metrics = allocate_checkpoint(run_dir, args.cap, out, args.data, seq_len=256, options=OPTIONS,
                                          device="cpu", replace=True, log=lambda *_: None)
            rows[arm, seed] = {"own_bpb": metrics["val_bpb_post"], "own_bytes": metrics["artifact_bytes"],
                               "own_quant": metrics["config"]["quant"]}
    data = resolve_data(args.data, 1024)
    for seed in args.seeds:
        for arm in ("B", "C", "D"):
            nbytes, bpb = same_allocation(os.path.join(args.runs, f"{arm}-{seed}"), rows["B", seed]["own_quant"], data, runtime)
            rows[arm, seed].update(same_bytes=nbytes, same_bpb=bpb)

    lines = [f"tiny, 200 steps; B = QAT last 30% int5 clip {args.clip:g}; C / D = B + rate_lambda {lambdas['C']:g} / {lambdas['D']:g}; "
             f"allocation at {args.cap:,} total bytes ({OPTIONS})",
             f"{'arm':<4}{'seed':>6}{'own bpb':>10}{'own bytes':>12}{'same-alloc bpb':>16}{'same-alloc model bytes':>24}"]
    for (arm, seed), r in sorted(rows.items()):
        lines.append(f"{arm:<4}{seed:>6}{r['own_bpb']:>10.4f}{r['own_bytes']:>12,}{r['same_bpb']:>16.4f}{r['same_bytes']:>24,}")
    lines.append("")

    def column(arm, key):
        return [rows[arm, s][key] for s in args.seeds]

    for arm in ("C", "D"):
        lines.append(paired(f"own allocation at the cap, post bpb {arm}-B", column("B", "own_bpb"), column(arm, "own_bpb")))
        lines.append(paired(f"B's allocation, post bpb {arm}-B", column("B", "same_bpb"), column(arm, "same_bpb")))
        lines.append(paired(f"B's allocation, model bytes {arm}-B (%)", column("B", "same_bytes"), column(arm, "same_bytes"),
                            100 / statistics.mean(column("B", "same_bytes")), "%"))
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(HERE, "out", "rate_at_cap.txt"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
