"""How an export was selected, stated: the challenge's significance test assumes the seeds it is given were not
used to choose the configuration, and a reader judges a score by how many configurations it was the best of.

`selection_summary` counts what a study ran (configurations, trials by outcome, re-runs and their seeds) for an
export's README and submission.json; `fresh_seeds` gives `search confirm` seeds that no trial of the study used.
"""

from optuna.trial import TrialState

from search.budget.reruns import RERUN_ATTR, SEED_ATTR, best_configuration, configurations, params_key


def trial_seed(trial) -> int | None:
    """The seed a trial trained with: a re-run's own (or a script trial's recorded one), else its config's."""
    seed = trial.user_attrs.get(SEED_ATTR)
    if seed is None:
        seed = trial.user_attrs.get("config", {}).get("train", {}).get("seed")
    return int(seed) if isinstance(seed, (int, float)) else None


def seeds_used(study) -> set[int]:
    """Every seed a trial of the study trained (or was queued to train) with."""
    return {s for s in (trial_seed(t) for t in study.get_trials(deepcopy=False)) if s is not None}


def fresh_seeds(study, count: int, also_avoid: set[int] = frozenset()) -> list[int]:
    """The `count` smallest positive seeds that no trial of the study used (nor also_avoid)."""
    used = seeds_used(study) | set(also_avoid)
    seeds, candidate = [], 1
    while len(seeds) < count:
        if candidate not in used:
            seeds.append(candidate)
        candidate += 1
    return seeds


def selection_summary(study, exported) -> dict:
    """What the study ran before `exported` (a trial) was picked: trials that started, by outcome; distinct
    configurations; how many configurations were re-run and with how many seeds each; the seeds used."""
    ran = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    stages: dict[str, int] = {}
    for t in ran:
        stage = t.user_attrs.get("stage", t.state.name.lower())
        stages[stage] = stages.get(stage, 0) + 1
    rerun = [c for c in configurations(study) if c.rerun]
    best = best_configuration(study)
    mine = next((c for c in configurations(study) if c.key == params_key(exported)), None)
    return {"trials": len(ran), "originals": sum(1 for t in ran if RERUN_ATTR not in t.user_attrs),
            "configurations": len({params_key(t) for t in ran}), "by_stage": dict(sorted(stages.items())),
            "rerun_configurations": len(rerun), "seeds_per_rerun": sorted({len(c.trials) for c in rerun}),
            "exported_is_best": best is not None and best.key == params_key(exported), "exported_seeds": len(mine.trials) if mine else 1,
            "seeds_used": sorted(seeds_used(study))}


def selection_text(summary: dict) -> str:
    """The README's paragraph for selection_summary."""
    stages = ", ".join(f"{n} {stage}" for stage, n in summary["by_stage"].items())
    n = summary["rerun_configurations"]
    reruns = (f" {'The best configuration was' if n == 1 else f'The {n} best were'} re-run with new seeds "
              f"({'/'.join(str(n) for n in summary['seeds_per_rerun'])} seeds each, the original included)."
              if summary["rerun_configurations"] else " No configuration was re-run.")
    seeds = summary["exported_seeds"]
    chosen = (("This one is the best by its mean over " if summary["exported_is_best"] else "This one (picked by hand, "
               "not the study's best) was scored over ") + (f"{seeds} seeds." if seeds > 1 else "one seed."))
    return (f"Selected from {_count(summary['configurations'], 'configuration')} in {_count(summary['trials'], 'trial')} "
            f"({stages}).{reruns} {chosen} Seeds the study trained with: {_seed_list(summary['seeds_used'])}; `search confirm` "
            f"trains with seeds none of its trials used, as the challenge's significance test assumes.")


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _seed_list(seeds: list[int]) -> str:
    return ", ".join(map(str, seeds[:12])) + (f", ... ({len(seeds)} in all)" if len(seeds) > 12 else "") if seeds else "none recorded"
