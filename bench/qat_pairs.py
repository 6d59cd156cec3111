"""QAT and the rate term on the shipped `tiny` config: paired post-roundtrip bpb and model bytes over seeds.

Arms (200 steps, no wallclock cap, so the figures do not depend on machine load):
    A  no QAT
    B  QAT over the last 30% at int5 with clip k x row std (the storage's clip)
    C, D  B plus rate_lambda at two values
    E  B with the embedding fake-quantized too (qat_embed_bits 5, the same clip)
Every arm is stored at uniform int5 with the same clip, every matrix included (keep_float_max_numel 0,
so the stored set is the fake-quantized set plus the embedding; E fake-quantizes all of it). Each run lands in --runs/<arm>-<seed>;
a finished run with the same config is reused. --proxy shrinks the model and batch (2 blocks x 128,
sequences of 128, 4,096 tokens per step; same steps and schedule), about 12x less compute, for a machine
too busy for the tiny runs. Prints a per-seed table and paired differences
(mean +- standard error of the per-seed differences); also writes them to bench/out/qat_pairs.txt.

    python bench/qat_pairs.py [--seeds 1337 ...] [--rate-seeds 1337 ...] [--embed-seeds 1337 ...] [--lambdas 5 15] [--clip 8]
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.stats import paired_difference  # noqa: E402
from pgolf.cli import apply_overrides  # noqa: E402
from pgolf.config import config_to_dict  # noqa: E402
from pgolf.configfiles import resolve_config  # noqa: E402
from pgolf.datasets import default_data_root, resolve_data  # noqa: E402
from pgolf.metrics import RunMetrics, read_metrics_file  # noqa: E402
from pgolf.run import run  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def arm_overrides(arm: str, clip: float, lambdas: dict) -> list[str]:
    storage = ['quant.bits={"*" = 5}', f'quant.clip={{"*" = {clip}}}', "quant.keep_float_max_numel=0"]
    if arm == "A":
        return storage
    qat = ["train.qat_fraction=0.3", "train.qat_bits=5", f"train.qat_clip={clip}"]
    if arm == "E":
        qat += ["train.qat_embed_bits=5", f"train.qat_embed_clip={clip}"]
    return storage + qat + ([f"train.rate_lambda={lambdas[arm]}"] if arm in lambdas else [])


PROXY = ["model.model_dim=128", "model.num_layers=2", "train.seq_len=128", "train.batch_tokens=4096"]


def run_arm(arm: str, seed: int, clip: float, lambdas: dict, runs: str, data_root: str, proxy: bool = False) -> RunMetrics:
    overrides = (PROXY if proxy else []) + arm_overrides(arm, clip, lambdas) + [f"train.seed={seed}"]
    config = apply_overrides(resolve_config("tiny"), overrides)
    out = os.path.join(runs, f"{arm}-{seed}")
    metrics_path = os.path.join(out, "metrics.json")
    if os.path.isfile(metrics_path):
        metrics = read_metrics_file(metrics_path)
        if metrics.config == config_to_dict(config):
            return metrics
    data = resolve_data(data_root, config.model.vocab_size)
    print(f"running {arm} seed {seed} ...", flush=True)
    return run(config, data, out, device="cpu", force=True, echo=False)


def paired(label: str, base: list[float], other: list[float], scale: float = 1.0, unit: str = "") -> str:
    mean, se, diffs = paired_difference(base, other, scale)
    return f"{label}: {mean:+.4f} +- {se:.4f}{unit} (n={len(diffs)}; per seed {', '.join(f'{d:+.4f}' for d in diffs)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338, 1339, 1340, 1341])
    parser.add_argument("--rate-seeds", type=int, nargs="+", default=[1337, 1338, 1339])
    parser.add_argument("--embed-seeds", type=int, nargs="+", default=[1337, 1338, 1339, 1340, 1341])
    parser.add_argument("--lambdas", type=float, nargs=2, default=[5.0, 15.0], metavar=("C", "D"))
    parser.add_argument("--clip", type=float, default=8.0)
    parser.add_argument("--runs", default=os.path.join(HERE, "out", "qat_runs"))
    parser.add_argument("--data", default=default_data_root())
    parser.add_argument("--proxy", action="store_true", help="the smaller proxy shape (see above)")
    args = parser.parse_args()
    runs = args.runs + ("_proxy" if args.proxy else "")
    lambdas = {"C": args.lambdas[0], "D": args.lambdas[1]}
    results = {}
    for seed in args.seeds:
        for arm in ("A", "B") + (("C", "D") if seed in args.rate_seeds else ()) + (("E",) if seed in args.embed_seeds else ()):
            results[arm, seed] = run_arm(arm, seed, args.clip, lambdas, runs, args.data, args.proxy)

    lines = [f"{'proxy (tiny at 2 x 128, seq 128, 4,096 tokens/step)' if args.proxy else 'tiny'}, 200 steps; stored uniform int5, clip {args.clip:g} x row std, every matrix; "
             f"B = QAT last 30% int5 clip {args.clip:g}; C = B + rate_lambda {lambdas['C']:g}; D = B + rate_lambda {lambdas['D']:g}; "
             f"E = B + embedding QAT int5 clip {args.clip:g}",
             f"{'arm':<4}{'seed':>6}{'post bpb':>11}{'pre bpb':>10}{'gap':>9}{'model bytes':>13}{'entropy B':>11}{'train loss':>12}"]
    for (arm, seed), m in sorted(results.items()):
        lines.append(f"{arm:<4}{seed:>6}{m.val_bpb_post:>11.4f}{m.val_bpb_pre:>10.4f}{m.quant_gap_bpb:>+9.4f}"
                     f"{m.model_bytes:>13,}{m.int_symbol_entropy_bytes:>11,}{m.final_train_loss:>12.4f}")
    lines.append("")
    for arm in ("A", "B", "C", "D", "E"):
        got = [m for (a, _), m in results.items() if a == arm]
        if got:
            lines.append(f"mean {arm}: post bpb {statistics.mean(m.val_bpb_post for m in got):.4f}, "
                         f"model bytes {statistics.mean(m.model_bytes for m in got):,.0f} (n={len(got)})")

    def column(arm, seeds, key):
        return [results[arm, s][key] for s in seeds]

    lines.append(paired("post bpb B-A", column("A", args.seeds, "val_bpb_post"), column("B", args.seeds, "val_bpb_post")))
    lines.append(paired("model bytes B-A (%)", column("A", args.seeds, "model_bytes"), column("B", args.seeds, "model_bytes"),
                        100 / statistics.mean(column("A", args.seeds, "model_bytes")), "%"))
    rate_seeds = [s for s in args.seeds if s in args.rate_seeds]
    for arm in ("C", "D"):
        if rate_seeds:
            base_bytes = statistics.mean(column("B", rate_seeds, "model_bytes"))
            lines.append(paired(f"post bpb {arm}-B", column("B", rate_seeds, "val_bpb_post"), column(arm, rate_seeds, "val_bpb_post")))
            lines.append(paired(f"model bytes {arm}-B (%)", column("B", rate_seeds, "model_bytes"), column(arm, rate_seeds, "model_bytes"),
                                100 / base_bytes, "%"))
    embed_seeds = [s for s in args.seeds if s in args.embed_seeds]
    if embed_seeds:
        for base in ("B", "A"):
            lines.append(paired(f"post bpb E-{base}", column(base, embed_seeds, "val_bpb_post"), column("E", embed_seeds, "val_bpb_post")))
        lines.append(paired("quantization gap E-B", column("B", embed_seeds, "quant_gap_bpb"), column("E", embed_seeds, "quant_gap_bpb")))
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    with open(os.path.join(HERE, "out", "qat_pairs" + ("_proxy" if args.proxy else "") + ".txt"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
