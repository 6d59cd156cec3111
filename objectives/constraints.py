"""The objective and the hard constraints of a trial, in Optuna 5's terms (constraint <= 0 is feasible)."""

from dataclasses import dataclass

OBJECTIVE_MODES = {"bpb": ("minimize",), "bpb,bytes": ("minimize", "minimize")}
CONSTRAINT_KEYS = ("artifact_bytes", "train_seconds", "eval_seconds")


@dataclass
class Outcome:
    """What a finished trial measured: post-roundtrip bpb and the three capped quantities."""

    val_bpb: float
    artifact_bytes: int
    train_seconds: float
    eval_seconds: float


def constraint_values(outcome: Outcome, caps) -> dict:
    """Signed distances to each cap: <= 0 means within it. Bytes are exact integers."""
    return {
        "artifact_bytes": float(outcome.artifact_bytes - caps.artifact_bytes),
        "train_seconds": outcome.train_seconds - caps.train_seconds,
        "eval_seconds": outcome.eval_seconds - caps.eval_seconds,
    }


def is_feasible(constraints: dict) -> bool:
    return all(v <= 0 for v in constraints.values())


def objective_values(outcome: Outcome, mode: str) -> list[float]:
    if mode not in OBJECTIVE_MODES:
        raise ValueError(f"unknown objectives {mode!r} (use {' or '.join(OBJECTIVE_MODES)})")
    return [outcome.val_bpb] if mode == "bpb" else [outcome.val_bpb, float(outcome.artifact_bytes)]
