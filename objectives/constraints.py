"""The objective and the hard constraints of a trial, in Optuna 5's terms (constraint <= 0 is feasible)."""

from dataclasses import dataclass

OBJECTIVE_MODES = {"bpb": ("minimize",), "bpb,bytes": ("minimize", "minimize")}
METRIC_NAMES = {"bpb": ["val_bpb"], "bpb,bytes": ["val_bpb", "artifact_bytes"]}  # the values' names, in order
CONSTRAINT_KEYS = ("artifact_bytes", "train_seconds", "eval_seconds")
# The pre-Optuna-5 system attribute: one list in CONSTRAINT_KEYS order. optuna-dashboard (0.21) reads only
# this one, to grey out infeasible trials; Optuna 5 itself keeps one "constraints:<key>" attribute per key.
LEGACY_CONSTRAINTS_ATTR = "constraints"


def pre_quant_text(metrics: dict) -> str:
    """The float model's score as a trial recorded it: the whole split (older trials, or val_tokens 0), else
    the validation subset its reports and quantization gap use, named as such."""
    if "val_bpb_pre" in metrics:
        return f"pre-quantization {metrics['val_bpb_pre']:.4f}"
    if "val_bpb_pre_subset" in metrics:
        return (f"pre-quantization {metrics['val_bpb_pre_subset']:.4f} on the first {metrics.get('subset_tokens', 0):,} validation "
                f"tokens, gap {metrics.get('quant_gap_bpb', float('nan')):+.4f}")
    return "pre-quantization -"


@dataclass
class Outcome:
    """What a finished trial measured: post-roundtrip bpb (nan when there is none) and the three capped quantities."""

    val_bpb: float
    artifact_bytes: int
    train_seconds: float
    eval_seconds: float


def at_submission_ranks(seconds: float, measured_ranks: int, caps) -> float:
    """An eval time measured on `measured_ranks` processes, as the submission's caps.eval_ranks would take it: each
    rank scores its share of the split, so the time scales with measured / submission ranks (a 1-GPU trial's TTT
    that takes 800 s there takes about 100 s on 8 GPUs, well within a 600 s cap). eval_ranks 0: as measured."""
    return seconds * measured_ranks / caps.eval_ranks if caps.eval_ranks else seconds


def constraint_values(outcome: Outcome, caps) -> dict:
    """Signed distances to each cap: <= 0 means within it. Bytes are exact integers."""
    return {
        "artifact_bytes": float(outcome.artifact_bytes - caps.artifact_bytes),
        "train_seconds": outcome.train_seconds - caps.train_seconds,
        "eval_seconds": outcome.eval_seconds - caps.eval_seconds,
    }


def record_constraints(trial, constraints: dict) -> None:
    """Store a trial's constraints for every reader of the study's storage:
    - Optuna 5 (samplers, best_trial): trial.set_constraint, one per key;
    - optuna-dashboard's plots: the legacy list (Optuna 5 reads it back too, as extra keys "0".."2" of
      trial.constraints with the same values, so feasibility is unchanged; named_constraints drops them);
    - people, on the dashboard's trial page, which lists user attributes but not constraints."""
    for key in CONSTRAINT_KEYS:
        trial.set_constraint(key, constraints[key])
    # Optuna 5 has no public Trial.set_system_attr, nor a public trial id: the storage call needs _trial_id.
    trial.storage.set_trial_system_attr(trial._trial_id, LEGACY_CONSTRAINTS_ATTR, [constraints[k] for k in CONSTRAINT_KEYS])
    trial.set_user_attr("constraints", {k: constraints[k] for k in CONSTRAINT_KEYS})


def named_constraints(trial) -> dict:
    """A trial's constraints by name, without the legacy list's numbered copies."""
    return {k: v for k, v in trial.constraints.items() if k in CONSTRAINT_KEYS}


def is_feasible(constraints: dict) -> bool:
    return all(v <= 0 for v in constraints.values())


def objective_values(outcome: Outcome, mode: str) -> list[float]:
    if mode not in OBJECTIVE_MODES:
        raise ValueError(f"unknown objectives {mode!r} (use {' or '.join(OBJECTIVE_MODES)})")
    return [outcome.val_bpb] if mode == "bpb" else [outcome.val_bpb, float(outcome.artifact_bytes)]
