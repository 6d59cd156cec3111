"""How a study spends its budget (the space's [search] table): multi-fidelity pruning over the validation reports
(fidelity.py), proxy-to-target extrapolation (extrapolate.py), re-runs of the best configurations with new seeds
(reruns.py), and where each trial's wall time goes (phases.py)."""
