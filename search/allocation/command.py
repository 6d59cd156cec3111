"""`search allocate`: the post-training allocation for one checkpoint (pgolf or official), at a byte cap.

Writes OUT/final_model.pgolf + train_gpt.py + config.toml for the chosen allocation, allocation.json
with every candidate, and metrics.json with the comparison table: the official int8 rule (uniform,
whether or not it fits), the best uniform width that fits, and the chosen allocation.
"""

import dataclasses
import json
import math
import os

from pgolf.assemble import code_bytes
from pgolf.checkpoint import load_any_checkpoint
from pgolf.config import COMPRESSORS, ROW_ORDERS, QuantConfig, compressor_missing, config_to_dict
from pgolf.datasets import resolve_data
from pgolf.staging import staged_dir
from pgolf.storage import FORMAT_AXES
from pgolf.submission import export_model, load_model, score, setup_runtime
from search.allocation import AllocationRequest, allocate, write_candidate
from space.spec import Caps, SpaceError, allocation_from_dict


def _uniform_int8(model, config, data, runtime) -> dict:
    """The official export rule for reference: int8 per row with the percentile clip, small tensors fp16."""
    official = dataclasses.replace(config, quant=QuantConfig(bits={"*": 8}, clip={"*": 0.0}, compressor="zstd", level=22,
                                                                    code=config.quant.code),
                                   eval=config.resolved_eval())
    blob, _, _ = export_model(model, official)
    fresh, _, eval_cfg = load_model(blob, runtime.device)
    result = score(fresh, eval_cfg, data.val_pattern, data.tokenizer, runtime)
    return {"label": "uniform int8 (official rule)", "artifact_bytes": len(blob) + code_bytes(config_to_dict(official)),
            "val_bpb": result.bpb, "eval_seconds": result.seconds}


def allocate_checkpoint(path: str, cap: int, out: str, data_root: str, tokenizer: str | None = None, seq_len: int = 1024,
                        eval_seconds: float = 600.0, options: dict | None = None, device: str | None = None,
                        replace: bool = False, log=print, code: str = "plain") -> dict:
    """code: the form the script is counted in (quant.code: plain | compressed)."""
    runtime = setup_runtime(device)
    model, config = load_any_checkpoint(path, seq_len, runtime.device)
    config = dataclasses.replace(config, quant=dataclasses.replace(config.quant, code=code))
    data = resolve_data(data_root, config.model.vocab_size, tokenizer)
    try:
        alloc_space = allocation_from_dict(dict(options or {}, confirm_top=2))
    except SpaceError as exc:
        raise SpaceError(f"allocation options: {exc}") from None
    caps = Caps(artifact_bytes=cap, train_seconds=math.inf, eval_seconds=eval_seconds)
    rows = [_uniform_int8(model, config, data, runtime)]
    log(f"{rows[0]['label']}: {rows[0]['artifact_bytes']:,} bytes, val_bpb {rows[0]['val_bpb']:.6f}")
    result = allocate(AllocationRequest(model, config, alloc_space, caps, data, runtime), log=log)
    for candidate in result.candidates:
        summary = candidate.summary()  # val_bpb None: not scored
        rows.append({k: summary[k] for k in ("label", "artifact_bytes", "val_bpb", "eval_seconds", "feasible")})
    if result.best is None:
        raise SpaceError(f"no allowed allocation fits {cap:,} bytes (the smallest candidate needs "
                         f"{min((c.artifact_bytes for c in result.candidates), default=0):,})")
    best = result.best
    metrics = {"cap_bytes": cap, "source": os.path.abspath(path), "table": rows, "chosen": best.label,
               "val_bpb_post": best.val_bpb, "val_loss_post": best.val_loss, "artifact_bytes": best.artifact_bytes,
               "model_bytes": len(best.blob), "code_bytes": best.byte_groups["code"], "bytes_by_group": best.byte_groups,
               "eval_seconds": best.eval_seconds, "config": config_to_dict(best.config), "data": dataclasses.asdict(data),
               "allocation_seconds": result.seconds}
    with staged_dir(out, replace=replace, flag="--replace") as stage:
        write_candidate(stage, best)
        for name, content in (("allocation.json", result.record()), ("metrics.json", metrics)):
            with open(os.path.join(stage, name), "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2)
    return metrics


def format_table(metrics: dict) -> str:
    lines = [f"{'allocation':<30} {'bytes':>12} {'val_bpb':>10}  fits {metrics['cap_bytes']:,}"]
    for row in metrics["table"]:
        fits = row["artifact_bytes"] <= metrics["cap_bytes"]
        bpb = f"{row['val_bpb']:>10.5f}" if row["val_bpb"] is not None else f"{'-':>10}"  # '-': not scored
        lines.append(f"{row['label']:<30} {row['artifact_bytes']:>12,} {bpb}  {'yes' if fits else 'no'}")
    return "\n".join(lines)


def offered_by_default(options: dict) -> dict:
    """`search allocate`'s choices: each flag given narrows its axis; without one the command offers all it has, every
    matrix format (each axis's `offered` values, pgolf/storage.py), every compressor installed here and both row
    orders: a user who passes no flag gets the best allocation it can find, at the cost of the formats' calibration and
    options (minutes on a CPU; the last log line says how long each phase took)."""
    everything = {axis.space_key: list(axis.offered) for axis in FORMAT_AXES if axis.per_tensor}
    everything["compressors"] = [c for c in COMPRESSORS if compressor_missing(c) is None]
    everything["row_orders"] = list(ROW_ORDERS)
    return {**everything, **options}


def parse_list(text: str | None, what: str, kind=int) -> list | None:
    """A comma-separated option value (None when the option was not given)."""
    if text is None:
        return None
    try:
        return [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise SpaceError(f"{what} must be comma-separated {noun}, got {text!r}") from None

