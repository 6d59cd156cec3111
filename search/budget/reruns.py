"""Noise-aware ranking: the study's best is a configuration's mean over seeds, not one lucky seed.

Once sampling ends, the `rerun_top` best feasible configurations (by their first trial's bpb) are queued to
train again with `rerun_seeds` new seeds each ([search] table of the space). A re-run is an ordinary trial of
the same sampled values whose user attributes say `rerun_of` (the original trial) and `seed`; it runs
through the same process, allocation and constraints, so its bpb is a full-split post-roundtrip score like
any other. Configurations are grouped by their sampled values; once any was re-run, the best configuration is
the re-run one with the lowest mean bpb (a configuration seen once cannot be compared fairly with a mean), and
`search export` writes its original trial's artifact.

A promotion ladder (search.promote_ranks) is the same re-runs with a rank count: sampled trials train on the
study's ranks_per_trial ranks with the training cap scaled to the steps a full-rank trial trains in it (and are
held to that scaled cap), the rerun_top best re-run on promote_ranks ranks at the real cap, and a configuration
re-run there is ranked by those runs alone. So a user with one 8-GPU node spends most trials on 1-2 GPUs each
and the last word on 8.
"""

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from objectives.constraints import is_feasible

RERUN_ATTR = "rerun_of"
SEED_ATTR = "seed"
RANKS_ATTR = "ranks"  # a trial that trains with other than the study's ranks_per_trial (a promotion ladder's re-run)
SEED_STRIDE = 1000  # re-run k of a trial trains with seed + k * SEED_STRIDE: clear of the seeds a study samples


@dataclass
class Configuration:
    """The trials of one sampled configuration: the original and its re-runs."""
    key: str
    original: object  # the first trial (a FrozenTrial) of these values
    trials: list = field(default_factory=list)  # complete trials with a score, the original first

    @property
    def ranked(self) -> list:
        """The trials that rank it: its runs at a promotion ladder's full ranks where it has any, else all of them."""
        return [t for t in self.trials if RANKS_ATTR in t.user_attrs] or self.trials

    @property
    def values(self) -> list[float]:
        return [t.values[0] for t in self.ranked]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def stderr(self) -> float:
        v = self.values
        return statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else math.nan

    @property
    def feasible(self) -> bool:
        return all(is_feasible(t.constraints) for t in self.trials)

    @property
    def rerun(self) -> bool:
        return len(self.trials) > 1


def trial_ranks(trial, settings) -> int:
    """The DDP ranks `trial` trains with: its own, where a re-run set them, else the study's ranks_per_trial."""
    return int(trial.user_attrs.get(RANKS_ATTR, settings.ranks_per_trial))


def rung_scale(ranks: int, plan) -> float:
    """A promotion ladder's budget factor for a trial on `ranks` ranks: promote_ranks / ranks, so that under a
    wallclock cap it trains the steps a trial on promote_ranks ranks trains in the cap (a linear speed-up over
    ranks, as DDP over the same tokens per step aims for); 1 off a ladder, at full ranks, and for step budgets."""
    return plan.promote_ranks / ranks if plan.promote_ranks > ranks else 1.0


def rung_config(config, ranks: int, plan):
    """The trial's config with its wallclock cap scaled by rung_scale (a step budget needs nothing)."""
    scale, train = rung_scale(ranks, plan), config.train
    if scale == 1.0 or train.max_wallclock_seconds <= 0:
        return config
    return dataclasses.replace(config, train=dataclasses.replace(train, max_wallclock_seconds=train.max_wallclock_seconds * scale))


def rung_caps(caps, ranks: int, plan):
    """The caps a trial is held to: a ladder's lower rung gets the training cap scaled as its budget is."""
    scale = rung_scale(ranks, plan)
    return caps if scale == 1.0 else dataclasses.replace(caps, train_seconds=caps.train_seconds * scale)


def params_key(trial) -> str:
    return json.dumps(trial.params, sort_keys=True, default=str)


def is_scored(t) -> bool:
    """A trial with a post-roundtrip bpb: COMPLETE (one without, rejected or infeasible, is told PRUNED: tell_unscored)."""
    return t.state == TrialState.COMPLETE


def configurations(study: optuna.Study) -> list[Configuration]:
    """Scored configurations, each with its original and its scored re-runs (other repeats of the same values,
    e.g. a trial the sampler proposed twice, count as seeds too)."""
    groups: dict = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if not is_scored(t):
            continue
        key = params_key(t)
        if key not in groups:
            groups[key] = Configuration(key, t)
        groups[key].trials.append(t)
    return list(groups.values())


def best_configuration(study: optuna.Study) -> Configuration | None:
    """The configuration with the lowest mean bpb among the re-run ones, if any was re-run; else the trial with the
    lowest bpb; of those whose original trial (the artifact export writes) is feasible. A re-run over a cap (a
    seed that trained a little slower) is flagged by ranking_lines, not a reason to drop the configuration."""
    feasible = [c for c in configurations(study) if is_feasible(c.original.constraints)]
    pool = [c for c in feasible if c.rerun] or feasible
    return min(pool, key=lambda c: (c.mean, c.original.number), default=None)


def queue_reruns(study: optuna.Study, top: int, seeds: int, ranks: int = 0) -> int:
    """Queue the missing re-runs of the `top` best feasible configurations by their original's bpb; returns how
    many were queued. Re-runs already queued, running or finished are not queued again; failed ones, and ones a
    pruner stopped (studies before re-runs were exempt from pruning), are. `ranks` > 0: the re-runs train on that
    many ranks (a promotion ladder's top rung)."""
    if top <= 0:
        return 0
    all_trials = study.get_trials(deepcopy=False)
    originals = [c.original for c in configurations(study) if is_feasible(c.original.constraints) and RERUN_ATTR not in c.original.user_attrs]
    queued = 0
    for original in sorted(originals, key=lambda t: t.values[0])[:top]:
        have = {t.user_attrs.get(SEED_ATTR) for t in all_trials if t.user_attrs.get(RERUN_ATTR) == original.number
                and t.state != TrialState.FAIL and t.user_attrs.get("stage") != "pruned"}
        base_seed = original.user_attrs.get("config", {}).get("train", {}).get("seed", 0)
        for k in range(1, seeds + 1):
            seed = base_seed + k * SEED_STRIDE
            if seed not in have:
                study.enqueue_trial(original.params, user_attrs={RERUN_ATTR: original.number, SEED_ATTR: seed,
                                                                 **({RANKS_ATTR: ranks} if ranks else {})})
                queued += 1
    return queued


def ranking_lines(study: optuna.Study) -> list[str]:
    """`search status`'s table of re-run configurations: mean +- standard error, and whether the order changed."""
    groups = [c for c in configurations(study) if c.rerun]
    if not groups:
        return []
    by_single = sorted(groups, key=lambda c: c.original.values[0])
    by_mean = sorted(groups, key=lambda c: c.mean)
    lines = ["configurations re-run with new seeds (ranked by mean bpb):",
             f"{'rank':>4} {'trial':>5} {'seeds':>5} {'mean bpb':>9} {'+- se':>7} {'first':>8} {'rank by first':>13}  trials"]
    for rank, c in enumerate(by_mean, 1):
        lines.append(f"{rank:>4} {c.original.number:>5} {len(c.trials):>5} {c.mean:>9.4f} {c.stderr:>7.4f} {c.original.values[0]:>8.4f} "
                     f"{by_single.index(c) + 1:>13}  {', '.join(str(t.number) for t in c.trials)}"
                     + ("" if c.feasible else "  (a re-run is over a cap)"))
    changed = [c.original.number for c in by_mean] != [c.original.number for c in by_single]
    lines.append("the ranking changed with the re-runs" if changed else "the ranking held with the re-runs")
    return lines


def seed_spread(study: optuna.Study, trial) -> dict:
    """The spread of post-roundtrip bpb over training seeds that the study measured, to judge a new run of `trial`'s
    configuration by: the standard deviation of that configuration's scores when it has two or more (the trial and
    its re-runs), else the pooled one of the study's configurations that have; std None where none has."""
    # Seeds: a configuration's first trial and its re-runs (a repeat the sampler proposed trains the same seed again).
    seeded = {c.key: (c.original.number, [t.values[0] for t in c.trials if t is c.original or RERUN_ATTR in t.user_attrs])
              for c in configurations(study)}
    groups = {key: group for key, group in seeded.items() if len(group[1]) > 1}
    if params_key(trial) in groups:
        number, values = groups[params_key(trial)]
        return {"std": statistics.stdev(values), "seeds": len(values), "of": f"trial {number}'s configuration"}
    if groups:
        dof = sum(len(values) - 1 for _, values in groups.values())
        pooled = math.sqrt(sum(statistics.variance(values) * (len(values) - 1) for _, values in groups.values()) / dof)
        return {"std": pooled, "seeds": sum(len(values) for _, values in groups.values()),
                "of": f"pooled over {len(groups)} re-run configuration(s)"}
    return {"std": None, "seeds": 1, "of": "no configuration of the study ran on two seeds"}
