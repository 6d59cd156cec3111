"""Multi-fidelity: which trials stop early, decided from the validation reports made during training.

A trial reports its validation bpb every `base.train.val_every_seconds` of training, so report k of every
trial is at the same training time whatever the model's speed. The space's [search] table names the rule:
- median: Optuna's MedianPruner (a trial below the median of earlier ones at the same report stops);
- successive_halving / hyperband: Optuna's pruners over reports, the first rung after `min_seconds` of
  training, one in `reduction_factor` going on at each rung (Hyperband also brackets the first rung);
- none.
Optuna prunes single-objective studies only. A Pareto study (bpb, bytes) with successive_halving or hyperband
promotes by non-dominated rank instead: at each rung a trial goes on if it is among the best 1/eta of the trials
that reached that rung, ranked by (non-dominated front of (report bpb, predicted bytes), report bpb).
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import optuna

RUNG_ATTR = "rung_{}"  # user attribute of a Pareto trial at a rung: [report bpb, predicted bytes]

# How a trial stops early (PrunerSpec.mechanism): the study's Optuna pruner on every report (single-objective
# studies: Optuna prunes no other), promotion at rungs by non-dominated rank (pareto_reporter), or never.
OPTUNA, PARETO, NONE = "optuna", "pareto", "none"


@dataclass(frozen=True)
class PrunerSpec:
    """What the coordinator and each trial process build their pruner from, in validation reports (a trial's
    request carries it as a dict; it is not kept in the storage)."""

    pruner: str  # a key of PRUNERS
    objectives: str  # bpb | bpb,bytes
    min_resource: int  # the first report that may stop a trial (the first rung)
    max_resource: int  # the last report within the training cap
    reduction_factor: int  # one in this many goes on at each rung
    min_seconds: float  # training seconds before the first rung (0 = the first report)

    @classmethod
    def of(cls, space, objectives: str) -> "PrunerSpec":
        """The spec of a space's [search] table, for a study with these objectives."""
        plan = space.search
        every = space.base.train.val_every_seconds
        first = max(1, math.ceil(plan.min_seconds / every)) if every > 0 and plan.min_seconds > 0 else 1
        last = max(first, math.floor(space.caps.train_seconds / every)) if every > 0 else first
        return cls(pruner=plan.pruner, objectives=objectives, min_resource=first, max_resource=last,
                   reduction_factor=plan.reduction_factor, min_seconds=plan.min_seconds)

    @property
    def mechanism(self) -> str:
        """OPTUNA, PARETO or NONE: the one place that decides how a trial of this study stops early."""
        rule = PRUNERS[self.pruner]
        if rule.build is None:
            return NONE
        if self.objectives == "bpb":
            return OPTUNA
        return PARETO if rule.rungs else NONE

    def optuna_pruner(self) -> optuna.pruners.BasePruner:
        """The study's Optuna pruner (NopPruner where trials do not stop through Optuna)."""
        return PRUNERS[self.pruner].build(self) if self.mechanism == OPTUNA else optuna.pruners.NopPruner()

    def is_rung(self, report: int) -> bool:
        """Report indices min_resource * eta^k are rungs."""
        r = self.min_resource
        while r < report:
            r *= self.reduction_factor
        return r == report


@dataclass(frozen=True)
class Pruner:
    """One rule of the space's search.pruner."""

    build: Callable[[PrunerSpec], optuna.pruners.BasePruner] | None  # its Optuna pruner; None: it never stops a trial
    rungs: bool  # stops trials only at rungs (PrunerSpec.is_rung), where a Pareto study promotes by non-dominated rank


# search.pruner's rules (space/core.py's PRUNERS lists the same names, to check a space file).
PRUNERS = {
    # Never on the first two reports unless min_seconds says later.
    "median": Pruner(lambda s: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2 if not s.min_seconds else s.min_resource - 1),
                     rungs=False),
    "successive_halving": Pruner(lambda s: optuna.pruners.SuccessiveHalvingPruner(min_resource=s.min_resource,
                                                                                  reduction_factor=s.reduction_factor), rungs=True),
    "hyperband": Pruner(lambda s: optuna.pruners.HyperbandPruner(min_resource=s.min_resource, max_resource=s.max_resource,
                                                                 reduction_factor=s.reduction_factor), rungs=True),
    "none": Pruner(None, rungs=False),
}


def trial_pruning(space, objectives: str, rerun: bool, backend_stops_trials: bool) -> dict | None:
    """The pruner spec a trial's request carries, as a dict; None when nothing in the trial stops it early: a
    re-run measures seed noise of a configuration already chosen, and a backend scheduler (Tune's ASHA) stops
    trials itself, from the same reports."""
    if rerun or backend_stops_trials:
        return None
    return dataclasses.asdict(PrunerSpec.of(space, objectives))


def front_ranks(points: list[tuple]) -> list[int]:
    """Non-dominated front index (0 = the Pareto front) of each point, all objectives minimised."""
    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    ranks, remaining, front = [0] * len(points), set(range(len(points))), 0
    while remaining:
        current = {i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining if j != i)}
        for i in current:
            ranks[i] = front
        remaining -= current
        front += 1
    return ranks


def promoted(own: tuple, others: list[tuple], reduction_factor: int) -> bool:
    """Whether `own` is among the best ceil(n / eta) of itself and `others` by (front, first objective)."""
    points = [own] + others
    ranks = front_ranks(points)
    order = sorted(range(len(points)), key=lambda i: (ranks[i], points[i][0], i))
    return order.index(0) < math.ceil(len(points) / reduction_factor)


def pareto_reporter(trial: optuna.trial.Trial, spec: PrunerSpec):
    """on_val(report, bpb) for a Pareto study: at each rung, record this trial's point and stop it unless promoted."""
    study = trial.study
    predicted_bytes = trial.user_attrs.get("predicted_min_bytes", 0)

    def on_val(report: int, bpb: float) -> None:
        if not spec.is_rung(report):
            return
        key = RUNG_ATTR.format(report)
        trial.set_user_attr(key, [bpb, predicted_bytes])
        others = [tuple(t.user_attrs[key]) for t in study.get_trials(deepcopy=False) if t.number != trial.number and key in t.user_attrs]
        if not promoted((bpb, predicted_bytes), others, spec.reduction_factor):
            raise optuna.TrialPruned(f"pruned at rung {report} (val bpb {bpb:.4f}, {predicted_bytes:,} predicted bytes: "
                                     f"not in the best 1/{spec.reduction_factor} by non-dominated rank of {len(others) + 1})")

    return on_val


PROXY_REPORTS = 10  # validation reports of a fixed-compute proxy run (one each proxy_steps / 10 steps)


def proxy_config(config, plan, caps):
    """The trial's config at the space's proxy budget (unchanged without one): proxy_steps trains exactly that many
    steps with no wallclock cap, reporting every proxy_steps / PROXY_REPORTS steps; proxy_seconds caps training
    there. The warmdown keeps its fraction of training."""
    if plan.proxy_steps:
        ratio = plan.proxy_steps / plan.target_steps
        train = dataclasses.replace(config.train, iterations=plan.proxy_steps, max_wallclock_seconds=0.0, val_every_seconds=0.0,
                                    val_every=max(1, plan.proxy_steps // PROXY_REPORTS))
    elif plan.proxy_seconds:
        ratio = plan.proxy_seconds / (plan.target_seconds or caps.train_seconds)
        train = dataclasses.replace(config.train, max_wallclock_seconds=plan.proxy_seconds)
    else:
        return config
    warmdown = max(1, round(config.train.warmdown_iters * ratio)) if config.train.warmdown_iters > 0 else 0
    return dataclasses.replace(config, train=dataclasses.replace(train, warmdown_iters=warmdown))


def extrapolation_spec(plan, caps) -> dict | None:
    """What a trial needs to predict its bpb at the target budget (None without a proxy)."""
    if not (plan.proxy_steps or plan.proxy_seconds):
        return None
    return {"target_steps": plan.target_steps if plan.proxy_steps else 0,
            "target_seconds": 0.0 if plan.proxy_steps else plan.target_seconds or caps.train_seconds, "gamma": plan.gap_growth}


def predict_at_target(spec: dict, trained, config, post: float, gap: float) -> dict | None:
    """The trial's post-roundtrip bpb extrapolated to the target budget (search/budget/extrapolate.py), or None when its
    run made fewer than 2 validation reports."""
    from search.budget.extrapolate import extrapolate

    if len(trained.val_history) < 2 or trained.steps == 0:
        return None
    target = spec["target_steps"] or spec["target_seconds"] / (trained.train_seconds / trained.steps)
    prediction = extrapolate(trained.val_history, config.train.lr_warmup_steps, trained.steps - config.train.warmdown_iters,
                             trained.steps, target, post, gap, spec["gamma"])
    return {"extrapolated_bpb": prediction["post"], "target_steps": target, "curve": [prediction["fit"].a, prediction["fit"].b, prediction["fit"].c]}
