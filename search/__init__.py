"""Studies over a space: ask Optuna for a config, reject what the byte predictor puts over the cap, train the rest
in processes of their own, choose each checkpoint's storage and evaluation, tell Optuna the post-roundtrip bpb.

    cli.py          the `search` command          study.py     storages, settings, study names
    samplers.py     the samplers a study may use   greedy.py    greedy forward selection (how the field tunes by hand)
    runner.py       start / resume a study         coordinator.py  ask -> predict -> tell, called by every backend
    trial.py        one trial's process: train -> allocation -> files
    backends/       where trial processes run: local subprocesses or Ray Tune trials
    allocation/     a checkpoint's per-unit formats, eval unroll, stride and TTT under the caps (`search allocate`)
    budget/         multi-fidelity pruning, proxy extrapolation, re-runs with new seeds, phase timing
    outputs/        status table, Pareto page, report
    submit/         export, verify, legality check, confirm with new seeds
"""

import pgolf  # noqa: E402,F401  (before anything loads torch: its OpenMP settings, pgolf/__init__.py)
