"""Where trial processes run: local subprocesses (local.py), or Ray Tune trials on a cluster (tune.py).

Either way a trial is `python -m search.trial DIR` in a process of its own (process.py). The coordinator keeps
Optuna's ask/tell (prepare_next, finish); a backend's `drive(coordinator)` runs the study's loop with them, and
`cancel`/`poll` let the coordinator stop it.
"""


def make_backend(settings):
    """The backend a study's settings name. `ray` was the plain ray.remote backend, retired for Tune."""
    if settings.backend == "local":
        from search.backends.local import LocalBackend

        return LocalBackend(settings.workers)
    if settings.backend in ("tune", "ray"):
        from search.backends.tune import TuneBackend

        return TuneBackend(settings)
    raise ValueError(f"unknown backend {settings.backend!r} (use local or tune)")
