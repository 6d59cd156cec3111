"""Where trial processes run: local subprocesses (local.py), or Ray Tune trials on a cluster (tune.py).

Either way a trial is `python -m search.trial DIR` in a process of its own (process.py), or, locally, a
`python -m search.trial --spare TRIALS` started before it was needed and handed DIR (spare.py). The coordinator keeps
Optuna's ask/tell (prepare_next, finish); a backend (base.py's Backend) runs the study's loop with them in
`drive(coordinator)`, and `cancel`/`poll` let the coordinator stop it. A new backend is a Backend subclass and
one entry in BACKENDS; `search run --backend` offers the names listed here.
"""

from importlib import import_module

from search.study import StudyError

# name -> "module:class"; a backend's module is imported only when a study uses it (tune.py imports Ray).
BACKENDS = {"local": "search.backends.local:LocalBackend", "tune": "search.backends.tune:TuneBackend"}


def backend_class(name: str):
    """The Backend subclass registered under `name`; a StudyError naming the known ones otherwise."""
    if name not in BACKENDS:
        raise StudyError(f"unknown backend {name!r} (use {' or '.join(BACKENDS)})")
    module, cls = BACKENDS[name].split(":")
    return getattr(import_module(module), cls)


def make_backend(settings):
    """The backend a study's settings name, built from them."""
    return backend_class(settings.backend)(settings)
