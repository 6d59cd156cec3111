"""The post-training allocation alone, on a trained checkpoint: how far each storage format lets the
per-unit knapsack close the gap to the float model, against the best uniform RTN width at the same cap.

Default: the official recipe's checkpoint (../shared/data/official_tiny/final_model.pt), seq_len 256,
chunked eval (stride 0, so only storage differs), at total caps of 1,000,000 and 700,000 bytes. One table
per cap, rows:

    float checkpoint        pgolf.submission.score of the loaded float model (the same eval as the data
                            README's official reference: bf16 embedding, fp32 matrices, bf16 autocast)
    best uniform RTN        the "best uniform" candidate of the RTN-only run
    knapsack RTN only       quantizers [rtn], outliers [0], ranks [0], awq [0] (the allocation before formats)
    + GPTQ                  quantizers [rtn, gptq]
    + outliers              outliers [0, 0.001, 0.005]
    + low-rank correction   ranks [0, 4, 16] (fp16 factors)
    + AWQ                   awq [0, 0.5]
    all together            all four at once

Columns: real artifact bytes (model file + code), val bpb, gap over the float score, and for the knapsack
rows the allocation's seconds per phase (allocation.json "phases"; "confirm" packs and scores every
candidate that run confirms: the knapsack and the best uniform, each re-proposed after a byte overshoot,
and the RTN-only fallback knapsack when nothing else is feasible; "total" also counts the eval-settings
phase) and how many times the knapsack was packed
(> 1: its real bytes overshot the cap and it was re-proposed at a lower budget). Below each table: every
knapsack's pick per unit. Then one summary line per cap: the gap of "all together" against the gap of
"knapsack RTN only", and whether it is at least halved.

Option sets, the same for every row (chosen so that the whole bench, 12 allocations, takes about half an
hour on a shared 2-core CPU): bits [3, 4, 5, 6], embedding_bits [5, 6, 8], clip [12.85], granularity
layer, compressor zstd, calibration/sensitivity tokens 32,768 (the `search allocate` default). Width 8 is
left out of the matrices: at these caps (under 4 bits a parameter for 2.1M parameters) no knapsack gave a
matrix unit more than 6 bits, and each width costs "all together" ~30-60 s of options per run.

Torch runs on BENCH_THREADS threads (default 1): with other jobs on the two cores, MKL's 2-thread SVD and
Cholesky (low-rank correction, GPTQ) run ~50x slower than on one thread (3 s vs 0.06 s for a 512x256
SVD, measured), while the eval is as fast on one thread.

    python bench/allocation_vs_uniform.py [CHECKPOINT CAP ...]     (e.g. a `pgolf run tiny` folder and 1000000)

Prints to stdout and to bench/out/allocation_vs_uniform.txt; each allocation's folder is
bench/out/allocation-<checkpoint>-<cap>-<variant>/ (metrics.json, allocation.json, the artifact).
"""

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pgolf.checkpoint import load_any_checkpoint  # noqa: E402
from pgolf.datasets import default_data_root, resolve_data  # noqa: E402
from pgolf.submission import score, setup_runtime  # noqa: E402
from search.allocation.command import allocate_checkpoint  # noqa: E402

SEQ_LEN = 256
CAPS = (1_000_000, 700_000)
OFFICIAL_FLOAT_BPB = 2.38774988  # official_tiny/README.md: float checkpoint, official dtype layout + bf16 autocast
BASE_OPTIONS = {"bits": [3, 4, 5, 6], "embedding_bits": [5, 6, 8], "clip": [12.85], "granularity": "layer",
                "eval_stride": [0], "compressors": ["zstd"]}
GPTQ = {"quantizers": ["rtn", "gptq"]}
OUTLIERS = {"outliers": [0.0, 0.001, 0.005]}
RANKS = {"ranks": [0, 4, 16]}
AWQ = {"awq": [0.0, 0.5]}
VARIANTS = [("knapsack RTN only", "rtn", {}),
            ("+ GPTQ", "gptq", GPTQ),
            ("+ outliers", "outliers", OUTLIERS),
            ("+ low-rank correction", "ranks", RANKS),
            ("+ AWQ", "awq", AWQ),
            ("all together", "all", {**GPTQ, **OUTLIERS, **RANKS, **AWQ})]
PHASES = ("calibration", "options", "sensitivity", "confirm")
REPORT = os.path.join(ROOT, "bench", "out", "allocation_vs_uniform.txt")

_printed: list[str] = []


def emit(text: str = "") -> None:
    """Print, and keep the report file up to date (a long bench leaves its finished tables behind)."""
    print(text, flush=True)
    _printed.append(text)
    os.makedirs(os.path.dirname(REPORT), exist_ok=True)
    with open(REPORT, "w", encoding="utf-8") as f:
        f.write("\n".join(_printed) + "\n")


def float_score(path: str) -> float:
    runtime = setup_runtime(None)
    model, config = load_any_checkpoint(path, SEQ_LEN, runtime.device)
    data = resolve_data(default_data_root(), config.model.vocab_size, None)
    return score(model, config.resolved_eval(), data.val_pattern, data.tokenizer, runtime).bpb


def run_variant(path: str, cap: int, slug: str, formats: dict) -> dict:
    """One `search allocate` run; its table rows by label, its allocation.json and the knapsack's pack count."""
    out = os.path.join(ROOT, "bench", "out", f"allocation-{os.path.basename(path.rstrip('/'))}-{cap}-{slug}")
    lines: list[str] = []
    started = time.perf_counter()
    metrics = allocate_checkpoint(path, cap, out, default_data_root(), seq_len=SEQ_LEN, options={**BASE_OPTIONS, **formats},
                                  replace=True, log=lines.append)
    with open(os.path.join(out, "allocation.json"), encoding="utf-8") as f:
        record = json.load(f)
    return {"rows": {r["label"]: r for r in metrics["table"]}, "record": record, "chosen": metrics["chosen"],
            "packs": sum(line.startswith("allocation knapsack: ") for line in lines), "wall": time.perf_counter() - started}


def unit_picks(summary: dict) -> str:
    """A candidate's format per unit, e.g. `blocks.0.attn.*=4b+gptq+r4`, from its quant tables."""
    units = [u for u in summary["bits"] if u != "*"]
    picks = []
    for unit in units:
        label = f"{summary['bits'][unit]}b"
        if len(BASE_OPTIONS["clip"]) > 1:
            label += f"/{summary['clip'][unit]:g}"
        for key, tag in (("quantizer", ""), ("awq", "awq"), ("outliers", "out"), ("rank", "r")):
            value = summary.get(key, {}).get(unit)
            if value not in (None, "rtn", 0, 0.0):
                label += f"+{tag}{value:g}" if tag else f"+{value}"
        picks.append(f"{unit}={label}")
    return " ".join(picks)


def cap_table(path: str, cap: int, float_bpb: float, runs: dict) -> tuple[float, float]:
    """Print one cap's table; returns the gaps (all together, knapsack RTN only)."""
    emit(f"\n{path} at a cap of {cap:,} bytes (seq_len {SEQ_LEN}, chunked eval, stride 0)")
    phase_head = " ".join(f"{p[:5]:>6}" for p in PHASES)
    emit(f"{'':<24}{'bytes':>10} {'val_bpb':>9} {'gap':>8}  fits  packs  seconds: {phase_head}  total")
    emit(f"{'float checkpoint':<24}{'-':>10} {float_bpb:>9.5f} {'-':>8}")
    uniform = runs["rtn"]["rows"].get("best uniform")
    if uniform and uniform["val_bpb"] is None:  # ranked behind the knapsack on a validation prefix: not scored
        emit(f"{'best uniform RTN':<24}{uniform['artifact_bytes']:>10,} {'behind the knapsack on a validation prefix':>18}")
    elif uniform:
        emit(f"{'best uniform RTN':<24}{uniform['artifact_bytes']:>10,} {uniform['val_bpb']:>9.5f} "
             f"{uniform['val_bpb'] - float_bpb:>+8.4f}  {'yes' if uniform['artifact_bytes'] <= cap else 'no':>4}")
    gaps = {}
    for label, slug, _ in VARIANTS:
        run = runs[slug]
        row = run["rows"].get("knapsack")
        if row is None:
            emit(f"{label:<24}{'nothing fits':>10}")
            continue
        gaps[slug] = row["val_bpb"] - float_bpb
        phases = run["record"]["phases"]
        emit(f"{label:<24}{row['artifact_bytes']:>10,} {row['val_bpb']:>9.5f} {gaps[slug]:>+8.4f}  "
             f"{'yes' if row['artifact_bytes'] <= cap else 'no':>4}  {run['packs']:>5}           "
             + " ".join(f"{phases.get(p, 0.0):>6.1f}" for p in PHASES) + f"  {run['record']['seconds']:>5.1f}")
    emit("picks per unit (knapsack; predicted bytes -> real; the run's best candidate if not the knapsack):")
    for label, slug, _ in VARIANTS:
        run = runs[slug]
        knapsack = [c for c in run["record"]["candidates"] if c["label"] == "knapsack"]
        if knapsack:
            c = knapsack[-1]
            best = "" if run["chosen"] == "knapsack" else f"  [run best: {run['chosen']} {run['rows'][run['chosen']]['val_bpb']:.5f}]"
            emit(f"  {label:<22} {unit_picks(c)}  ({c['predicted_bytes']:,} -> {c['artifact_bytes']:,}){best}")
    return gaps.get("all", float("nan")), gaps.get("rtn", float("nan"))


def main() -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", metavar="CHECKPOINT CAP",
                        help="pairs of a checkpoint and a total byte cap (default: official_tiny at 1,000,000 and 700,000)")
    args = parser.parse_args().cases
    if len(args) % 2 or not all(cap.isdigit() for cap in args[1::2]):
        parser.error("give CHECKPOINT CAP pairs, each cap a whole number of bytes")
    if args:
        cases = [(args[i], int(args[i + 1])) for i in range(0, len(args), 2)]
    else:
        cases = [(os.path.join(default_data_root(), "official_tiny", "final_model.pt"), cap) for cap in CAPS]
    started = time.perf_counter()
    opts = ", ".join(f"{k} {v}" for k, v in BASE_OPTIONS.items())
    emit(f"options for every row: {opts}; formats per row as in the docstring; torch threads {torch.get_num_threads()}")
    float_bpbs, summaries = {}, []
    for path, cap in cases:
        if not os.path.exists(path):
            emit(f"skipping {path}: not found (run `pgolf run tiny --out {path}` first)")
            continue
        if path not in float_bpbs:
            float_bpbs[path] = float_score(path)
            note = (f" (the data README's official reference for this eval: {OFFICIAL_FLOAT_BPB:.8f})"
                    if os.path.basename(path) == "final_model.pt" and "official_tiny" in path else "")
            emit(f"{path}: float val_bpb {float_bpbs[path]:.8f} computed with pgolf.submission.score{note}")
        runs = {}
        for label, slug, formats in VARIANTS:
            runs[slug] = run_variant(path, cap, slug, formats)
            emit(f"  [{cap:,}] {label}: {runs[slug]['wall']:.0f}s, knapsack "
                  f"{runs[slug]['rows'].get('knapsack', {}).get('val_bpb', float('nan')):.5f}")
        gap_all, gap_rtn = cap_table(path, cap, float_bpbs[path], runs)
        summaries.append(f"cap {cap:,}: gap over float, all together {gap_all:+.4f} vs knapsack RTN only {gap_rtn:+.4f} "
                         f"(ratio {gap_all / gap_rtn:.2f}): at least halved: {'yes' if gap_all <= gap_rtn / 2 else 'NO'}")
    emit("")
    for line in summaries:
        emit(line)
    emit(f"total wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
