"""The figures of one trained-and-scored model: one dataclass, written as `metrics.json` by `pgolf run` and by a
search trial, and read back by every command that reports them (status, report, export, confirm, `pgolf eval`).

A field is None when the run that wrote it did not measure it (a trial scores a validation subset before
quantizing, a `pgolf run` the whole split; only a trial has an allocation), and `metrics.json` leaves it out.
`record` in a field's metadata says which study trials carry it as an Optuna user attribute: "trained" for every
trial that trained, "scored" for a complete one. `export` marks what a submission's files are written from.
Older commits wrote some fields under other names (LEGACY_NAMES); `RunMetrics.from_dict` reads both.
"""

import dataclasses
import json
import os
from dataclasses import dataclass, field

from pgolf.files import read_json

METRICS_FILE = "metrics.json"
# name in metrics.json (or a trial's user attributes) written by earlier commits -> field name
LEGACY_NAMES = {"step_ms": "ms_per_step"}


def _figure(record: str | None = None, export: bool = False):
    return field(default=None, metadata={"record": record, "export": export})


@dataclass
class RunMetrics:
    # what ran: its config (a trial's: with the allocation's formats and eval settings) and data paths
    config: dict | None = _figure("scored", export=True)
    data: dict | None = _figure()
    # the model file, loaded back from its bytes and scored on the whole split
    val_bpb_post: float | None = _figure("scored", export=True)
    val_loss_post: float | None = _figure()
    eval_seconds: float | None = _figure("scored", export=True)
    val_tokens: int | None = _figure()
    val_bytes: int | None = _figure()
    eval: dict | None = _figure()  # the eval settings it was scored with
    quant_gap_bpb: float | None = _figure("scored")
    # bytes: artifact = code (the standalone script) + model (the compressed model file)
    artifact_bytes: int | None = _figure("scored", export=True)
    code_bytes: int | None = _figure("scored", export=True)
    model_bytes: int | None = _figure("scored", export=True)
    bytes_by_group: dict | None = _figure("scored", export=True)
    int_symbol_entropy_bytes: int | None = _figure()
    # training (train_seconds counts the calibration and quantization after training: they read training data)
    train_seconds: float | None = _figure("trained", export=True)
    post_training_seconds: float | None = _figure()  # the part of train_seconds after the last step
    steps: int | None = _figure("trained", export=True)
    ms_per_step: float | None = _figure("trained")  # training alone (not post-training) per step
    median_step_ms: float | None = _figure()
    train_tokens: int | None = _figure("trained", export=True)
    stopped_by: str | None = _figure("trained")  # "iterations" | "wallclock"
    final_train_loss: float | None = _figure()
    val_history: list | None = _figure()  # (step, val bpb) of the reports made while training
    reports: list | None = _figure("trained")  # a trial's [index, bpb] reports to the pruner
    params: int | None = _figure("trained")
    # the float model: on the whole validation split, or (a trial with train.val_tokens) on its first subset_tokens
    val_bpb_pre: float | None = _figure("trained")
    val_loss_pre: float | None = _figure()
    val_bpb_pre_subset: float | None = _figure("trained")
    subset_tokens: int | None = _figure("trained")
    # a search trial: its allocation, phases and the prediction at the target budget (a proxy-budget study)
    allocation: str | None = _figure("scored")
    allocation_seconds: float | None = _figure("trained")
    feasible: bool | None = _figure()
    phases: dict | None = _figure("trained")
    trial_seconds: float | None = _figure("trained")
    extrapolated_bpb: float | None = _figure("scored")
    target_steps: float | None = _figure("scored")
    curve: list | None = _figure()
    # a trial with its cap in a reference machine's seconds (search/budget/stepbudget.py): its step budget, the speed
    # ratio and source figures it came from, and its training time in the reference machine's seconds
    step_budget: dict | None = _figure("trained")
    reference_train_seconds: float | None = _figure("trained")
    # where it ran
    world_size: int | None = _figure()
    device: str | None = _figure()
    torch: str | None = _figure()
    host: str | None = _figure()
    finished: str | None = _figure()

    def to_dict(self) -> dict:
        """The measured fields (None ones left out), as metrics.json holds them."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> "RunMetrics":
        """From a metrics.json (or a trial's user attributes) of this or an earlier commit; other keys are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        renamed = {LEGACY_NAMES.get(k, k): v for k, v in data.items()}
        return cls(**{k: v for k, v in renamed.items() if k in known})

    def missing(self, names) -> list[str]:
        return [name for name in names if getattr(self, name) is None]


def recorded_names(record: str) -> tuple[str, ...]:
    """The fields a study trial records as user attributes: "trained" (every trained trial) or "scored" (complete)."""
    return tuple(f.name for f in dataclasses.fields(RunMetrics) if f.metadata["record"] == record)


EXPORT_NAMES = tuple(f.name for f in dataclasses.fields(RunMetrics) if f.metadata["export"])


def write_metrics(directory: str, metrics: RunMetrics) -> None:
    """metrics.json in `directory`, replaced whole (a reader never sees half a file)."""
    path = os.path.join(directory, METRICS_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(metrics.to_dict(), f, indent=2)
    os.replace(path + ".tmp", path)


def read_metrics_file(path: str, what: str = "run metrics") -> RunMetrics:
    return RunMetrics.from_dict(read_json(path, what))


def pipeline_metrics(outcome, code_bytes: int) -> RunMetrics:
    """The figures every caller of the pipeline (pgolf.submission.train_pack_score) records, from rank 0's Outcome:
    training, the float model's score (on the whole split, or on a subset), and the model file's bytes and score."""
    trained, pre, packed, post = outcome.trained, outcome.pre, outcome.packed, outcome.post
    m = RunMetrics(train_seconds=outcome.train_seconds, steps=trained.steps, train_tokens=trained.train_tokens,
                   ms_per_step=1000 * trained.train_seconds / max(trained.steps, 1), stopped_by=trained.stopped_by,
                   params=outcome.params)
    if outcome.pre_limit:
        m.val_bpb_pre_subset, m.subset_tokens = pre.bpb, pre.tokens
    else:
        m.val_bpb_pre, m.val_loss_pre = pre.bpb, pre.loss
    if packed is not None:
        m.post_training_seconds = packed.seconds
        m.model_bytes, m.code_bytes = len(packed.blob), code_bytes
        m.artifact_bytes = m.model_bytes + code_bytes
        m.bytes_by_group = dict(packed.sizes, code=code_bytes)
    if post is not None:
        m.val_bpb_post, m.val_loss_post, m.eval_seconds = post.bpb, post.loss, post.seconds
    return m
