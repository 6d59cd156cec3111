"""`search report NAME`: one offline page about a study: history, importances, learning curves with
pruned trials, the best trial's bytes and allocation, the byte predictor's error, time per phase."""

import html
import os
import statistics
import warnings

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState

from objectives.constraints import is_feasible
from pgolf.files import FileFormatError, read_json
from search.budget.reruns import best_configuration, ranking_lines
from search.budget.phases import trial_phases, wall_seconds
from search.outputs.pages import hover_text, scored_trials, table, write_page
from search.outputs.status import trial_rows, trial_stage
from search.study import open_existing_study, trial_dir


def history_figure(trials) -> go.Figure:
    fig = go.Figure()
    for feasible, name, symbol in ((True, "feasible", "circle"), (False, "infeasible", "x")):
        group = [t for t in trials if is_feasible(t.constraints) == feasible]
        fig.add_trace(go.Scatter(x=[t.number for t in group], y=[t.values[0] for t in group], mode="markers", name=name,
                                 marker=dict(symbol=symbol, size=10), text=[hover_text(t) for t in group],
                                 hovertemplate="%{text}<extra></extra>"))
    best, xs, ys = None, [], []
    for t in sorted(trials, key=lambda t: t.number):
        if is_feasible(t.constraints) and (best is None or t.values[0] < best):
            best = t.values[0]
        if best is not None:
            xs.append(t.number)
            ys.append(best)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="best feasible so far", line=dict(shape="hv")))
    fig.update_layout(xaxis_title="trial", yaxis_title="post-roundtrip val bpb", height=420)
    return fig


def importance_section(study, trials):
    """Parameter importances (Optuna's default evaluator) over the trained trials with a post-roundtrip bpb
    (feasible or not): rejected, pruned and failed trials, and those no allocation fitted, have none."""
    if len(trials) < 3:
        return f"<p>Needs at least 3 scored trials (has {len(trials)}).</p>"
    copy = optuna.create_study(directions=study.directions)
    copy.add_trials([t for t in trials if t.params])
    try:
        # Optuna warns (on stderr, amid the study's lines) when a parameter's value was seen in under two trials;
        # the page already says how few trials the importances rest on.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            importances = optuna.importance.get_param_importances(copy)
    except (RuntimeError, ValueError) as exc:
        return f"<p>Importances unavailable: {exc}</p>"
    if not importances:
        return "<p>No parameter varied across the scored trials.</p>"
    names = list(importances)[::-1]
    fig = go.Figure(go.Bar(x=[importances[n] for n in names], y=names, orientation="h"))
    fig.update_layout(xaxis_title="importance for post-roundtrip bpb", height=120 + 30 * len(names))
    return fig


def curves_figure(study) -> go.Figure:
    fig = go.Figure()
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        reports = t.intermediate_values or {int(i): v for i, v in (t.user_attrs.get("reports") or [])}
        if not reports:
            continue
        pruned = t.state == TrialState.PRUNED  # by the pruner, or trained but no allocation fitted the cap
        steps = sorted(reports)
        fig.add_trace(go.Scatter(x=steps, y=[reports[s] for s in steps], mode="lines+markers",
                                 name=f"#{t.number}" + (f" {trial_stage(t)}" if pruned else ""),
                                 line=dict(dash="dot" if pruned else "solid", color="#d62728" if pruned else None)))
    fig.update_layout(xaxis_title="validation report (equal training time between reports)",
                      yaxis_title="val bpb during training (subset)", height=420)
    return fig


def best_trial_sections(directory, trial) -> list:
    groups = trial.user_attrs.get("bytes_by_group", {})
    bytes_fig = go.Figure(go.Bar(x=list(groups), y=list(groups.values()), text=[f"{v:,}" for v in groups.values()]))
    bytes_fig.update_layout(yaxis_title="bytes", height=360)
    sections = [(f"Best feasible trial {trial.number}: bytes by group", bytes_fig)]
    path = os.path.join(trial_dir(directory, trial.number), "allocation.json")
    if os.path.exists(path):
        allocation = read_json(path, f"trial {trial.number}'s allocation record")
        if not isinstance(allocation.get("candidates"), list) or "best" not in allocation:
            raise FileFormatError(f"{path} is not an allocation record (no candidates and best): the trial folder was changed")
        chosen = next((c for c in allocation["candidates"] if c["label"] == allocation["best"]), None)
        if chosen:
            rows = [[pattern, bits, chosen["clip"].get(pattern, 0.0), allocation["sensitivities"].get(pattern, float("nan"))]
                    for pattern, bits in chosen["bits"].items()]
            summary = table(["tensors", "bits", "clip k", "sensitivity (loss per unit MSE)"], rows)
            candidates = table(["candidate", "bytes", "val bpb", "eval s", "feasible"],
                               [[c["label"], c["artifact_bytes"], "not scored" if c["val_bpb"] is None else c["val_bpb"],
                                 "-" if c["eval_seconds"] is None else c["eval_seconds"], c["feasible"]]
                                for c in allocation["candidates"]])
            sections.append((f"Best feasible trial {trial.number}: chosen allocation ({allocation['best']})", summary + "<p></p>" + candidates))
        if "evaluation_choice" in allocation:
            try:
                tables = evaluation_choice_tables(allocation["evaluation_choice"])
            except (AttributeError, KeyError, TypeError):
                raise FileFormatError(f"{path}: its evaluation_choice is not a joint choice's record (the trial folder was changed)") from None
            sections.append((f"Best feasible trial {trial.number}: evaluation settings considered (joint choice)", tables))
    return sections


def evaluation_choice_tables(choice: dict) -> str:
    """The joint choice's record (search/allocation/joint.py: JointChoice.record) as two tables: each piece measured
    alone, then every candidate combination with its predicted and (for the winner) measured gain and time."""
    def number(value):
        return "-" if value is None else value

    pieces = table(["piece", "held-out gain (nats)", "eval time / plain", "timed on", "outcome"],
                   [[p["setting"], number(p["held_out_gain"]), number(p["time_ratio"]), p["timed_on"] or "-",
                     "too slow alone" if p["stopped_over_cap"] else "measured" if p["timed"] else "not timed"]
                    for p in choice.get("pieces", [])])
    candidates = table(["candidate", "predicted gain (nats)", "predicted eval s", "measured gain (nats)", "fits the cap", "chosen"],
                       [[c["setting"], c["predicted_gain"], c["predicted_eval_seconds"], number(c["measured_gain"]), c["fits"], c["chosen"]]
                        for c in choice.get("candidates", [])])
    return pieces + "<p></p>" + candidates


def predictor_section(trials):
    pairs = [(t.user_attrs["predicted_bytes"], t.user_attrs["artifact_bytes"], t) for t in trials if "predicted_bytes" in t.user_attrs]
    if not pairs:
        return "<p>No trial has both a prediction and a measured artifact.</p>"
    errors = [abs(p - r) / r for p, r, _ in pairs]
    fig = go.Figure(go.Scatter(x=[r for _, r, _ in pairs], y=[p for p, _, _ in pairs], mode="markers",
                               text=[f"trial {t.number}: {(p - r) / r:+.2%}" for p, r, t in pairs], hovertemplate="%{text}<extra></extra>"))
    low, high = min(min(p, r) for p, r, _ in pairs), max(max(p, r) for p, r, _ in pairs)
    fig.add_trace(go.Scatter(x=[low, high], y=[low, high], mode="lines", name="exact", line=dict(dash="dash")))
    fig.update_layout(xaxis_title="real artifact bytes", yaxis_title="predicted before training", height=420, showlegend=False)
    note = (f"<p>Relative error over {len(pairs)} trials: median {statistics.median(errors):.2%}, max {max(errors):.2%} "
            "(prediction from the calibration available when the trial started, for the allocation it ended with).</p>")
    return note, fig


def budget_section(directory: str, study) -> str | None:
    """A study with its cap in a reference machine's seconds: the speed ratio, the published figures it came from, the
    step-time model's fit, and each trial's step budget beside the step time it measured here (None without one)."""
    from search.budget.stepbudget import read_calibration

    calibration = read_calibration(directory)
    if calibration is None:
        return None
    text = (f"<p>{html.escape(calibration.summary())}. Measured {html.escape(calibration.measured_at)} on "
            f"{html.escape(calibration.host)} ({calibration.threads} threads); each trial trains its cap of reference seconds "
            "as a fixed step count, the cap over its predicted reference step time.</p>")
    text += table(["published figure", "ms/step there", "FLOPs/step", "modelled ms/step here", "ratio", "source"],
                  [[f["label"], f["step_ms"], f"{f['flops_per_step']:.3g}", f"{f['local_step_ms']:.1f}", f"{f['ratio']:.4g}", f["source"]]
                   for f in calibration.figures])
    text += "<p></p>" + table(["probe", "tokens/step", "FLOPs/step", "measured ms/step", "model ms/step", "model error"],
                              [[p["label"], p["tokens_per_step"], f"{p['flops_per_step']:.3g}", f"{p['step_ms']:.1f}",
                                f"{p['model_step_ms']:.1f}", f"{p['model_error']:+.1%}"] for p in calibration.probes])
    rows, errors = [], []
    for t in study.get_trials(deepcopy=False):
        budget = t.user_attrs.get("step_budget")
        if not budget:
            continue
        error = budget["local_step_ms"] / budget["measured_local_step_ms"] - 1 if budget.get("measured_local_step_ms") else None
        if error is not None:
            errors.append(abs(error))
        rows.append([t.number, budget["steps"], budget.get("trained_steps", "-"), f"{budget['reference_step_ms']:.2f}",
                     f"{budget['local_step_ms']:.1f}", f"{budget['measured_local_step_ms']:.1f}" if error is not None else "-",
                     f"{error:+.1%}" if error is not None else "-", f"{t.user_attrs.get('reference_train_seconds', float('nan')):.1f}"])
    if rows:
        text += (f"<p>Trials: the model's error on this machine's measured step times, mean {sum(errors) / max(len(errors), 1):.1%}, "
                 f"max {max(errors, default=0):.1%} over {len(errors)} trials (full-size steps, not probes).</p>")
        text += table(["#", "step budget", "trained", f"predicted ms/step on {calibration.machine}", "modelled ms/step here",
                       "measured ms/step here", "model error here", f"train s on {calibration.machine}"], rows)
    return text


def phases_figure(trials) -> go.Figure:
    numbers = [t.number for t in trials]
    phases = [trial_phases(t.user_attrs, wall_seconds(t)) for t in trials]
    names = list(dict.fromkeys(name for p in phases for name in p))
    fig = go.Figure([go.Bar(x=numbers, y=[p.get(name, 0.0) for p in phases], name=name) for name in names])
    fig.update_layout(barmode="stack", xaxis_title="trial", yaxis_title="seconds (ask to tell)", height=420)
    return fig


def report_page(name: str, results: str, out: str | None = None) -> str:
    directory, settings, study = open_existing_study(name, results)
    trials = scored_trials(study)
    rows = trial_rows(study)
    states = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    configuration = best_configuration(study)
    best = configuration.original if configuration else None
    summary = table(["trials"] + list(states), [[len(rows)] + list(states.values())])
    if configuration is not None and configuration.rerun:
        summary += (f"<p>Best feasible: trial {best.number}'s configuration, post-roundtrip bpb {configuration.mean:.4f} &plusmn; "
                    f"{configuration.stderr:.4f} over {len(configuration.trials)} seeds, {best.user_attrs['artifact_bytes']:,} bytes.</p>")
        summary += "<pre>" + html.escape("\n".join(ranking_lines(study))) + "</pre>"
    elif best is not None:
        summary += f"<p>Best feasible: trial {best.number}, post-roundtrip bpb {best.values[0]:.4f}, {best.user_attrs['artifact_bytes']:,} bytes.</p>"
    sections = [("Summary", summary), ("Optimisation history", history_figure(trials)),
                (f"Parameter importances (over the {len(trials)} trained trials with a post-roundtrip bpb, of {len(rows)})",
                 importance_section(study, trials)),
                ("Validation bpb during training (pruned and infeasible trials dotted)", curves_figure(study))]
    if best is not None:
        sections += best_trial_sections(directory, best)
    predictor = predictor_section(trials)
    if isinstance(predictor, tuple):
        sections += [("Byte predictor error", predictor[0]), ("Byte predictor: predicted vs real", predictor[1])]
    else:
        sections.append(("Byte predictor error", predictor))
    budget = budget_section(directory, study)
    if budget is not None:
        sections.append(("Step budget: the training cap in reference seconds", budget))
    sections.append(("Time per trial phase", phases_figure(trials)))
    sections.append(("All trials", table(["#", "state", "bpb", "bytes", "train s", "eval s", "feasible", "note"],
                                         [[r["number"], r["state"], r["bpb"], r["bytes"] or "-", r["train_s"] or "-", r["eval_s"] or "-",
                                           "-" if r["feasible"] is None else r["feasible"], ("baseline " if r["baseline"] else "") + r["reason"][:80]]
                                          for r in rows])))
    return write_page(out or os.path.join(directory, "report.html"), f"{name}: study report", sections)
