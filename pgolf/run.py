"""`pgolf run`: one config -> trained model -> exact artifact -> post-roundtrip bpb, written to a folder.

Files in OUT (written to a staging folder first; OUT appears only when everything succeeded):
    config.toml        the config that ran
    train_gpt.py       the standalone submission script; its size is code_bytes (with quant.code = "compressed" its
                       self-extracting form, and train_gpt_source.py beside it the readable script, not counted)
    final_model.pgolf  the compressed model; its size is model_bytes
    checkpoint.pgolf   float weights (lossless, for re-allocation and export)
    train.log          the run's log
    metrics.json       the figures (pgolf.metrics.RunMetrics)
"""

import dataclasses
import math
import os
import platform
import statistics
import time

import torch

from pgolf.artifact import ArtifactError
from pgolf.assemble import SCRIPT_FILE, write_script  # noqa: F401 (SCRIPT_FILE: still importable from here)
from pgolf.checkpoint import CHECKPOINT_FILE, checkpoint_bytes
from pgolf.config import RunConfig, config_to_dict
from pgolf.configfiles import config_to_toml
from pgolf.datasets import DataPaths
from pgolf.files import FileFormatError, read_json
from pgolf.metrics import METRICS_FILE, RunMetrics, pipeline_metrics, write_metrics
from pgolf.quant import symbol_entropy_bits
from pgolf.staging import check_target, staged_dir
from pgolf.submission import MODEL_FILE, load_model, process_group_scope, read_file, score, setup_runtime, train_pack_score


class RunLog:
    """Prints a line and appends it to the run's log file."""

    def __init__(self, path: str, echo: bool = True):
        self.path = path
        self.echo = echo

    def __call__(self, message: str) -> None:
        if self.echo:
            print(message, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(message + "\n")


def run(config: RunConfig, data: DataPaths, out_dir: str, device: str | None = None, force: bool = False,
        on_val=None, echo: bool = True) -> RunMetrics:
    """Train, round-trip and score `config`; returns (and writes) its metrics.

    Under torchrun every rank trains and scores its share; rank 0 alone writes OUT.
    """
    check_target(os.path.abspath(out_dir), force)  # on every rank, before any of them trains
    runtime = setup_runtime(device)
    with process_group_scope(runtime):
        if not runtime.is_main:
            return _run(config, data, None, runtime, on_val, lambda *_: None)
        with staged_dir(out_dir, replace=force) as stage:
            return _run(config, data, stage, runtime, on_val, RunLog(os.path.join(stage, "train.log"), echo))


def subset_validator(config: RunConfig, data: DataPaths, runtime):
    """The validation reports' score while training (a run's and a trial's): bpb on the first train.val_tokens tokens."""
    return lambda model: score(model, config.resolved_eval(), data.val_pattern, data.tokenizer, runtime, limit=config.train.val_tokens).bpb


def _run(config: RunConfig, data: DataPaths, stage: str | None, runtime, on_val, log) -> RunMetrics:
    """The run itself; `stage` is the folder to write (None on ranks other than 0, which write nothing and return
    the post-roundtrip score alone)."""

    def write(name: str, content: str | bytes) -> None:
        if stage is not None:
            with open(os.path.join(stage, name), "wb") as f:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)

    write("config.toml", config_to_toml(config))
    code = write_script(stage, config_to_dict(config)) if stage is not None else 0
    log(f"pgolf run: {data.describe()} on {runtime.device}" + (f", {runtime.world_size} ranks" if runtime.world_size > 1 else ""))
    outcome = train_pack_score(config, data, runtime, stage and os.path.join(stage, MODEL_FILE), log=log, on_val=on_val,
                               validate_fn=subset_validator(config, data, runtime),
                               after_training=None if stage is None else lambda model, _: write(CHECKPOINT_FILE, checkpoint_bytes(model, config)))
    post, result = outcome.post, outcome.trained
    if stage is None:
        return RunMetrics(val_bpb_post=post.bpb, val_loss_post=post.loss, eval_seconds=post.seconds)
    metrics = pipeline_metrics(outcome, code)
    metrics.quant_gap_bpb = post.bpb - outcome.pre.bpb
    metrics.val_tokens, metrics.val_bytes, metrics.eval = post.tokens, post.bytes, dataclasses.asdict(outcome.post_eval)
    metrics.int_symbol_entropy_bytes = math.ceil(symbol_entropy_bits(outcome.packed.stored) / 8)
    metrics.median_step_ms = 1000 * statistics.median(result.step_seconds[5:] or result.step_seconds or [0.0])
    metrics.final_train_loss, metrics.val_history, metrics.world_size = result.final_train_loss, result.val_history, runtime.world_size
    metrics.data, metrics.config = dataclasses.asdict(data), config_to_dict(config)
    metrics.device, metrics.torch, metrics.host = str(runtime.device), torch.__version__, platform.node()
    metrics.finished = time.strftime("%Y-%m-%dT%H:%M:%S")
    log(summary(metrics))
    write_metrics(stage, metrics)
    return metrics


def read_model_file(out_dir: str) -> bytes:
    return read_file(os.path.join(out_dir, MODEL_FILE))


def rescore(out_dir: str, data: DataPaths, runtime, change_eval=None) -> dict:
    """Score the model file in `out_dir` from its bytes alone (fresh model, no training state); change_eval maps
    (model settings, the file's eval settings) to the ones to score with."""
    try:
        return rescore_blob(read_model_file(out_dir), data, runtime, change_eval)
    except ArtifactError as exc:
        raise ArtifactError(f"{os.path.join(out_dir, MODEL_FILE)}: {exc}") from None


def rescore_blob(blob: bytes, data: DataPaths, runtime, change_eval=None) -> dict:
    model, model_cfg, eval_cfg = load_model(blob, runtime.device)
    eval_cfg = change_eval(model_cfg, eval_cfg) if change_eval else eval_cfg
    post = score(model, eval_cfg, data.val_pattern, data.tokenizer, runtime)
    return {"val_bpb_post": post.bpb, "val_loss_post": post.loss, "eval_seconds": post.seconds,
            "val_tokens": post.tokens, "val_bytes": post.bytes, "eval": dataclasses.asdict(eval_cfg)}


def summary(m: RunMetrics) -> str:
    groups = ", ".join(f"{k} {v:,}" for k, v in m.bytes_by_group.items())
    return (f"val_bpb pre {m.val_bpb_pre:.4f} post {m.val_bpb_post:.4f} (gap {m.quant_gap_bpb:+.4f})\n"
            f"artifact {m.artifact_bytes:,} bytes = model {m.model_bytes:,} + code {m.code_bytes:,} ({groups})\n"
            f"{m.params:,} params, {m.steps} steps, {m.train_tokens:,} tokens, train {m.train_seconds:.1f}s "
            f"({m.ms_per_step:.0f} ms/step), eval {m.eval_seconds:.1f}s")


def read_metrics(out_dir: str) -> dict:
    path = os.path.join(out_dir, METRICS_FILE)
    if not os.path.isfile(path):
        raise FileFormatError(f"{out_dir} is not a pgolf run folder (no {METRICS_FILE})")
    return read_json(path, "run metrics")
