"""Greedy forward selection: how the field tunes by hand (the 1.0611 record chose nine of its variables so).

From the incumbent — the point of the study's first trial, which is the space's baseline when it has one —
the plan takes one variable at a time in the space's order, tries each of its few values (its choices, or
GRID_POINTS points of its range) with every other variable held, keeps the best and moves on to the next
variable. After the last variable it passes again from the first with the new incumbent, skipping points
already run; once a whole pass improves nothing the plan has converged and further trials sample at random.

Stateless, so `search resume` and several workers continue the same plan: when a trial starts, its point is
derived from the study's other trials and stored in its system attributes (POINT_KEY); the plan needs nothing
else. A trial that failed, was pruned or is infeasible counts as worse than every feasible one, and one still
running counts as worse for now (the plan moves on instead of waiting). A Pareto study ranks by its bpb.
"""

import math

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from objectives.constraints import is_feasible

GRID_POINTS = 3  # values tried of a low/high range: both ends and the middle (geometric middle for log)
POINT_KEY = "greedy:point"


def grid(dim) -> list:
    """The values greedy selection tries for one space Dimension, in order."""
    if dim.choices is not None:
        return list(dim.choices)
    low, high, n = dim.low, dim.high, GRID_POINTS
    if dim.log:
        points = [low * (high / low) ** (i / (n - 1)) for i in range(n)]
    else:
        points = [low + (high - low) * i / (n - 1) for i in range(n)]
    if dim.step:
        points = [min(low + round((p - low) / dim.step) * dim.step, high) for p in points]
    points = [int(round(p)) if dim.is_int else round(float(p), 12) for p in points]
    return list(dict.fromkeys(points))


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b and type(a) is type(b)


class GreedyPlan:
    """The visiting order over a space's dimensions; `next_point` reads a study's history and says what comes next."""

    def __init__(self, dims):
        self.order = [d.key for d in dims]
        self.grids = {d.key: grid(d) for d in dims}
        self.centre = {name: values[len(values) // 2] for name, values in self.grids.items()}

    def _key(self, point: dict) -> tuple:
        return tuple(round(v, 9) if isinstance(v, float) else v for v in (point.get(n) for n in self.order))

    def next_point(self, history: list[tuple[dict, float]]) -> dict | None:
        """The next point to run, given (point, score) of earlier trials in trial order (score: lower is better,
        inf for failed, pruned, infeasible or unfinished); the first trial's point starts the plan. None: a
        whole pass improved nothing (converged)."""
        if not history:
            return dict(self.centre)
        best: dict[tuple, float] = {}
        for point, score in history:
            key = self._key(point)
            best[key] = min(best.get(key, math.inf), score)
        incumbent = {**self.centre, **history[0][0]}
        incumbent_score = best[self._key(incumbent)] if self._key(incumbent) in best else math.inf
        while True:
            moved = False
            for name in self.order:
                tries = [{**incumbent, name: v} for v in self.grids[name] if not _same(v, incumbent[name])]
                for point in tries:
                    if self._key(point) not in best:
                        return point
                for point in tries:  # all run: keep the best (the incumbent on a tie)
                    if best[self._key(point)] < incumbent_score:
                        incumbent, incumbent_score, moved = point, best[self._key(point)], True
            if not moved:
                return None


def trial_score(trial: optuna.trial.FrozenTrial) -> float:
    if trial.state != TrialState.COMPLETE or not trial.values or not is_feasible(trial.constraints):
        return math.inf
    return float(trial.values[0])


def _fit(value, distribution):
    """`value` made a member of `distribution` (a conditional dimension's range can be narrower than the space's)."""
    if isinstance(distribution, CategoricalDistribution):
        return value if any(_same(value, c) for c in distribution.choices) else None
    if isinstance(value, (bool, str)) or not isinstance(value, (int, float)):
        return None
    value = min(max(value, distribution.low), distribution.high)
    step = distribution.step
    if step:
        value = distribution.low + round((value - distribution.low) / step) * step
        value = min(value, distribution.high)
    return int(round(value)) if isinstance(distribution, IntDistribution) else float(value)


class GreedySampler(optuna.samplers.BaseSampler):
    """Optuna sampler for GreedyPlan; `dims` are the space's Dimensions in the space's order."""

    def __init__(self, dims, seed: int | None = None):
        self.plan = GreedyPlan(dims)
        self._random = optuna.samplers.RandomSampler(seed=seed)

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def before_trial(self, study, trial) -> None:
        history = []
        for other in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
            if other.number == trial.number:
                continue
            point = other.system_attrs.get(POINT_KEY) or other.system_attrs.get("fixed_params") or other.params
            if point:
                history.append((point, trial_score(other)))
        point = self.plan.next_point(history)
        fixed = trial.system_attrs.get("fixed_params", {})
        if point is None:  # converged: only what is enqueued is fixed, the rest random
            point = {}
        point = {**point, **fixed}
        study._storage.set_trial_system_attr(trial._trial_id, POINT_KEY, point)

    def sample_independent(self, study, trial, param_name, param_distribution):
        point = trial.system_attrs.get(POINT_KEY) or {}
        if param_name in point:
            value = _fit(point[param_name], param_distribution)
            if value is not None:
                return value
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        self._random.reseed_rng()
