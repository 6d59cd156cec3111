"""`search pareto NAME`: post-roundtrip bpb against artifact bytes (and train seconds), caps drawn,
feasible and infeasible trials told apart, the feasible Pareto front highlighted."""

import os

import plotly.graph_objects as go

from objectives.constraints import is_feasible
from search.outputs.pages import hover_text, pareto_front, scored_trials, write_page
from search.study import open_existing_study


def _scatter(trials, x_key, name, symbol, color, size=10):
    return go.Scatter(x=[t.user_attrs[x_key] for t in trials], y=[t.user_attrs["val_bpb_post"] for t in trials],
                      mode="markers", name=name, marker=dict(symbol=symbol, color=color, size=size),
                      text=[hover_text(t) for t in trials], hovertemplate="%{text}<extra></extra>")


def trade_off_figure(trials, x_key: str, x_title: str, cap: float, front=None) -> go.Figure:
    feasible = [t for t in trials if is_feasible(t.constraints)]
    infeasible = [t for t in trials if not is_feasible(t.constraints)]
    fig = go.Figure()
    fig.add_trace(_scatter(feasible, x_key, "feasible", "circle", "#1f77b4"))
    fig.add_trace(_scatter(infeasible, x_key, "infeasible (over a cap)", "x", "#d62728"))
    baseline = [t for t in trials if t.user_attrs.get("baseline")]
    if baseline:
        fig.add_trace(_scatter(baseline, x_key, "baseline shape", "diamond-open", "#333333", size=16))
    if front:
        fig.add_trace(go.Scatter(x=[t.user_attrs[x_key] for t in front], y=[t.user_attrs["val_bpb_post"] for t in front],
                                 mode="lines+markers", name="Pareto front", line=dict(color="#2ca02c", width=2),
                                 marker=dict(symbol="star", size=14, color="#2ca02c"),
                                 text=[hover_text(t) for t in front], hovertemplate="%{text}<extra></extra>"))
    fig.add_vline(x=cap, line_dash="dash", line_color="#d62728", annotation_text=f"cap {cap:,.0f}")
    fig.update_layout(xaxis_title=x_title, yaxis_title="post-roundtrip val bpb (lower is better)", height=520,
                      hoverlabel=dict(align="left"), legend=dict(orientation="h", y=-0.18))
    return fig


def pareto_page(name: str, results: str, out: str | None = None) -> str:
    directory, settings, study = open_existing_study(name, results)
    caps = settings.space.get("caps", {})
    trials = [t for t in scored_trials(study) if "train_seconds" in t.user_attrs]
    front = pareto_front(trials)
    sections = [
        ("bpb vs artifact bytes", trade_off_figure(trials, "artifact_bytes", "artifact bytes (code + compressed model)",
                                                   caps.get("artifact_bytes", 16_000_000), front)),
        ("bpb vs training seconds", trade_off_figure(trials, "train_seconds", "training seconds",
                                                     caps.get("train_seconds", 600.0))),
    ]
    return write_page(out or os.path.join(directory, "pareto.html"), f"{name}: Pareto front", sections)
