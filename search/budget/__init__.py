"""How a study spends its budget (the space's [search] table): multi-fidelity pruning over the validation reports
(fidelity.py), proxy-to-target extrapolation (extrapolate.py), re-runs of the best configurations with new seeds
(reruns.py), where each trial's wall time goes (phases.py), and a training cap in a reference machine's seconds as a
step budget per configuration (stepbudget.py, with the reference machines' published figures in references.py)."""
