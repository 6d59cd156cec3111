"""The samplers a study may use (`search run --sampler NAME`): one table of names and what each does, one factory.

The sampler is fixed when a study starts (study.json) and rebuilt from it on every open, so each must be
resumable from the study's storage alone: Optuna's keep nothing that the storage does not, and greedy
selection derives each trial's point from the finished trials (search/greedy.py).
"""

import optuna

from search.errors import StudyError

SAMPLERS = {
    "tpe": "Optuna's TPE (multivariate, constant liar for parallel workers) after a few random start-up trials",
    "nsga2": "Optuna's NSGA-II genetic algorithm (Pareto studies)",
    "random": "independent uniform sampling",
    "greedy": "greedy forward selection as the field tunes by hand: one variable at a time in the space's order over "
              "its choices or 3 points of its range, keep the best, move on (search/greedy.py)",
}


def sampler_help() -> str:
    return "; ".join(f"{name}: {what}" for name, what in SAMPLERS.items())


def make_sampler(name: str, seed: int | None, objectives: str, startup_trials: int, space_dims=lambda: []):
    """The Optuna sampler `name`; `space_dims()` gives the space's Dimensions in file order (greedy's visiting
    order), called only by a sampler that needs them (loading a script space reads its script)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials, multivariate=True, constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, startup_trials))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "greedy":
        from search.greedy import GreedySampler

        return GreedySampler(space_dims(), seed=seed)
    raise StudyError(f"unknown sampler {name!r} (use {', '.join(SAMPLERS)})")
