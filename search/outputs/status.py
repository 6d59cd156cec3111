"""`search status NAME`: one row per trial and the best feasible trial."""

import math

from optuna.trial import TrialState

from objectives.constraints import is_feasible
from pgolf.metrics import RunMetrics
from search.budget.reruns import RERUN_ATTR, SEED_ATTR, best_configuration, ranking_lines
from search.study import open_existing_study


def trial_stage(t) -> str:
    """complete | infeasible | rejected | pruned | failed | running | waiting."""
    if t.state == TrialState.FAIL:
        return "failed"
    if t.state == TrialState.PRUNED:
        # Trials with no bpb, rejected before training or with no allocation under the cap, are PRUNED too.
        return t.user_attrs["stage"] if t.user_attrs.get("stage") in ("rejected", "infeasible") else "pruned"
    return t.user_attrs.get("stage", t.state.name.lower())


def trial_rows(study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        stage = trial_stage(t)
        m = RunMetrics.from_dict(t.user_attrs)  # the figures the coordinator recorded (those the trial measured)
        reports = m.reports or []
        bpb = t.values[0] if stage == "complete" else reports[-1][1] if stage == "pruned" and reports else math.nan
        rows.append({
            "number": t.number, "state": stage, "bpb": bpb,
            "bytes": m.artifact_bytes if m.artifact_bytes is not None else t.user_attrs.get("predicted_min_bytes") if stage == "rejected" else None,
            "extrapolated": m.extrapolated_bpb, "train_s": m.train_seconds, "eval_s": m.eval_seconds,
            "feasible": is_feasible(t.constraints) if t.constraints else None,  # a pruned or running trial has none
            "baseline": bool(t.user_attrs.get("baseline")), "reason": t.user_attrs.get("reason", ""),
            "retry_of": t.user_attrs.get("retry_of"), "rerun_of": t.user_attrs.get(RERUN_ATTR), "seed": t.user_attrs.get(SEED_ATTR),
            "ran_on": placement_label(t.user_attrs.get("placement")),
            "script_bytes": t.user_attrs.get("script_reported_bytes"),  # a script trial's own "Total submission size"
        })
    return rows


def placement_label(placement: dict | None) -> str | None:
    """Where a trial ran, short: its Ray node id (or host) and the GPUs it saw."""
    if not placement:
        return None
    node = str(placement.get("node") or placement.get("host") or "?")[:12]
    gpus = placement.get("cuda_visible_devices")
    return node + (f" gpu {gpus}" if gpus else "")


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def print_status(name: str, results: str) -> None:
    directory, settings, study = open_existing_study(name, results)
    print(f"study {name} ({settings.objectives}, sampler {settings.sampler}, storage {settings.storage})")
    rows = trial_rows(study)
    # With a proxy budget: each trial's bpb extrapolated to the target budget beside the proxy's real one.
    target = any(row["extrapolated"] is not None for row in rows)
    # Where each trial ran, once that tells something: more than one node or host, or GPUs.
    places = {row["ran_on"] for row in rows if row["ran_on"]}
    where = len(places) > 1 or any(" gpu " in p for p in places)
    print(f"{'#':>4} {'state':<10} {'bpb':>8}" + (f" {'@target':>8}" if target else "") + f" {'bytes':>12} {'train s':>8} {'eval s':>7} {'feasible':>8}"
          + (f"  {'ran on':<20}" if where else "") + "  note")
    for row in rows:
        note = "baseline" if row["baseline"] else ""
        if row["rerun_of"] is not None:
            note = (note + f" seed {row['seed']} of trial {row['rerun_of']}'s configuration").strip()
        if row["retry_of"] is not None:
            note = (note + f" retry of trial {row['retry_of']}").strip()
        if row.get("script_bytes") is not None and row["bytes"] is not None and row["script_bytes"] != row["bytes"]:
            note = (note + f" the script says {row['script_bytes']:,} bytes").strip()  # pgolf's measurement ranks
        if row["reason"] and row["state"] in ("rejected", "failed", "pruned", "infeasible"):
            note = (note + " " + row["reason"]).strip()
        feasible = "-" if row["feasible"] is None else "yes" if row["feasible"] else "no"
        print(f"{row['number']:>4} {row['state']:<10} {_fmt(row['bpb'], '.4f'):>8}" + (f" {_fmt(row['extrapolated'], '.4f'):>8}" if target else "")
              + f" {_fmt(row['bytes'], ',d'):>12} "
              f"{_fmt(row['train_s'], '.1f'):>8} {_fmt(row['eval_s'], '.1f'):>7} {feasible:>8}"
              + (f"  {row['ran_on'] or '-':<20}" if where else "") + f"  {note[:90]}")
    if target:
        print("@target: the bpb extrapolated from the proxy budget to the target budget (search/budget/extrapolate.py), a prediction")
    for line in ranking_lines(study):
        print(line)
    best = best_configuration(study)
    if best is None:
        print("no feasible trial yet")
    elif best.rerun:
        t = best.original
        print(f"best feasible: trial {t.number}'s configuration, bpb {best.mean:.4f} +- {best.stderr:.4f} over {len(best.trials)} seeds "
              f"(this trial {t.values[0]:.4f}), {t.user_attrs.get('artifact_bytes', 0):,} bytes ({directory}/trials/{t.number:04d})")
    else:
        t = best.original
        print(f"best feasible: trial {t.number}, bpb {t.values[0]:.4f} (one seed), {t.user_attrs.get('artifact_bytes', 0):,} bytes "
              f"({directory}/trials/{t.number:04d})")
