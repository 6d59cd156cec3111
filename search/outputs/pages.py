"""Self-contained HTML pages of plotly figures: plotly.js is inlined once, so pages work offline
and load no network resource."""

import html
import json
import math
import os

import plotly.graph_objects as go
import plotly.offline

from objectives.constraints import is_feasible, pre_quant_text
from pgolf.staging import OutputExists
from search.outputs.status import trial_stage


def write_page(path: str, title: str, sections: list) -> str:
    """sections: (heading, plotly figure | html string) pairs, in order."""
    if os.path.isdir(path):
        raise OutputExists(f"{path} is a folder: give --out a file name, e.g. {os.path.join(path, 'page.html')}")
    parts = []
    for i, (heading, body) in enumerate(sections):
        if isinstance(body, go.Figure):
            body = body.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{i}",
                                config={"displaylogo": False, "responsive": True})
        parts.append(f"<section><h2>{html.escape(heading)}</h2>{body}</section>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>"
            "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
            "th{background:#f4f4f4}section{margin-bottom:2em}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(path + ".tmp", path)
    return path


def table(header: list, rows: list) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def scored_trials(study) -> list:
    """Complete trials with a real artifact (not rejected before training, not without any allocation)."""
    return [t for t in study.get_trials(deepcopy=False) if trial_stage(t) == "complete"]


def pareto_front(trials: list) -> list:
    """Feasible trials not dominated in (bpb, artifact bytes), sorted by bytes."""
    feasible = [t for t in trials if is_feasible(t.constraints)]
    front = []
    for t in feasible:
        b, n = t.user_attrs["val_bpb_post"], t.user_attrs["artifact_bytes"]
        dominated = any(o.user_attrs["val_bpb_post"] <= b and o.user_attrs["artifact_bytes"] <= n and
                        (o.user_attrs["val_bpb_post"] < b or o.user_attrs["artifact_bytes"] < n) for o in feasible)
        if not dominated:
            front.append(t)
    return sorted(front, key=lambda t: t.user_attrs["artifact_bytes"])


def hover_text(t) -> str:
    """A trial's sampled values and chosen allocation, for the hover box."""
    config = t.user_attrs.get("config", {})
    model = config.get("model", {})
    quant = config.get("quant", {})
    lines = [f"trial {t.number}" + (" (baseline)" if t.user_attrs.get("baseline") else ""),
             f"bpb {t.user_attrs.get('val_bpb_post', float('nan')):.4f} ({pre_quant_text(t.user_attrs)})",
             *([f"at the target budget: {t.user_attrs['extrapolated_bpb']:.4f} (extrapolated)"] if "extrapolated_bpb" in t.user_attrs else []),
             f"{t.user_attrs.get('artifact_bytes', 0):,} bytes, {t.user_attrs.get('params', 0):,} params",
             f"{model.get('num_layers')}x{model.get('model_dim')} h{model.get('num_heads')}/kv{model.get('num_kv_heads')} "
             f"mlp {model.get('mlp_mult')} sp{model.get('vocab_size')}"
             + (f" loop {model.get('loop_start')}+{model.get('loop_len')}x{model.get('loop_repeats')}" if model.get("loop_len") else "")]
    lines += [f"{k} = {v}" for k, v in t.params.items() if not k.startswith("model.")]
    lines.append("bits: " + json.dumps(quant.get("bits", {}), separators=(", ", ": ")))
    lines.append(f"eval stride {config.get('eval', {}).get('stride')} unroll {config.get('eval', {}).get('repeats')}, "
                 f"{quant.get('compressor')}")
    return "<br>".join(html.escape(line) for line in lines)
