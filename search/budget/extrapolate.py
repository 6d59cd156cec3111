"""Proxy -> full-budget extrapolation: a configuration's post-roundtrip bpb at a longer training budget,
predicted from a run at a short one.

The proxy's post-roundtrip bpb moves by two fitted terms:
- the validation curve: the reports made at constant learning rate (after warmup, before the warmdown) are
  fitted with L(s) = a + b * s^-c (s = steps; b >= 0, c on a grid, a and b by least squares); the score
  gains L(target) - L(proxy) (what the warmdown adds, and the offset between the reports' validation subset
  and the whole split, are taken to be the same at both budgets, so they cancel);
- the quantization gap grows with training (longer-trained weights quantize worse): it becomes
  gap * (target / proxy)^gamma, gamma fitted on configurations run at both budgets (or given).
"""

import math
from dataclasses import dataclass

EXPONENTS = [0.05 * k for k in range(1, 41)]  # c from 0.05 to 2.0


@dataclass
class CurveFit:
    a: float
    b: float
    c: float
    points: int

    def __call__(self, s: float) -> float:
        return self.a + self.b * s ** -self.c


def fit_curve(steps: list[float], values: list[float]) -> CurveFit:
    """Least-squares a + b * s^-c over the points (b >= 0; with fewer than 3 points, c = 0.5)."""
    if len(steps) < 2:
        raise ValueError("a validation curve needs at least 2 reports to fit")
    best = None
    for c in EXPONENTS if len(steps) >= 3 else [0.5]:
        x = [s ** -c for s in steps]
        mx, my = sum(x) / len(x), sum(values) / len(values)
        sxx = sum((xi - mx) ** 2 for xi in x)
        b = max(sum((xi - mx) * (yi - my) for xi, yi in zip(x, values)) / sxx, 0.0) if sxx > 0 else 0.0
        a = my - b * mx
        sse = sum((a + b * xi - yi) ** 2 for xi, yi in zip(x, values))
        if best is None or sse < best[0]:
            best = (sse, CurveFit(a, b, c, len(steps)))
    return best[1]


def constant_lr_reports(history: list, warmup: int, warmdown_start: float) -> list:
    """The (step, bpb) reports after warmup and before the warmdown; all of them if fewer than 3 qualify."""
    flat = [(s, v) for s, v in history if s > warmup and s <= warmdown_start]
    return flat if len(flat) >= 3 else list(history)


def extrapolate(history: list, warmup: int, warmdown_start: float, proxy: float, target: float, post: float, gap: float,
                gamma: float) -> dict:
    """Predicted post-roundtrip bpb at `target` from a proxy run of `proxy` (the history's unit: steps) that scored
    `post` with a quantization gap `gap`: post + L(target) - L(proxy) + gap * ((target / proxy)^gamma - 1)."""
    points = constant_lr_reports(history, warmup, warmdown_start)
    fit = fit_curve([float(s) for s, _ in points], [v for _, v in points])
    gain = fit(target) - fit(proxy)
    growth = gap * ((target / proxy) ** gamma - 1.0)
    return {"post": post + gain + growth, "float_gain": gain, "gap_growth": growth, "fit": fit}


def fit_gap_growth(pairs: list[tuple[float, float]], ratio: float) -> float:
    """gamma of gap(target) = gap(proxy) * ratio^gamma, as the median over configurations run at both budgets of
    log(gap_full / gap_proxy) / log(ratio) (pairs of (proxy gap, full gap); pairs with a gap <= 0 are skipped)."""
    values = sorted(math.log(full / proxy) / math.log(ratio) for proxy, full in pairs if proxy > 0 and full > 0)
    if not values:
        return 0.0
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
