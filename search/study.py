"""Studies on disk: results/<name>/ with the Optuna storage, study.json, and trials/NNNN/ folders.

Storage choice (what is safe for how many writers):
- one local worker: SQLite (results/<name>/study.db);
- several local workers or processes: Optuna's JournalStorage on a file (results/<name>/journal.log),
  whose writes are serialised by a lock file;
- many machines: any Optuna storage URL given with --storage (e.g. postgresql://...).
`journal:///path` names a journal file explicitly.
"""

import json
import os
import re
import shlex
import time
import warnings
from dataclasses import dataclass, field

import optuna

from objectives.constraints import METRIC_NAMES
from pgolf.files import read_json
from search.errors import StudyError  # noqa: F401  (imported from here by most of search/)
from search.samplers import SAMPLERS, make_sampler  # noqa: F401  (the sampler family lives there)
from space.spec import SpaceError

RESULTS_DIR = os.environ.get("PGOLF_RESULTS", "results")
STUDY_FILE = "study.json"
TRIALS_DIR = "trials"

# A study name is one folder under the results folder, never a path: letters, digits, '.', '_' and '-',
# starting with a letter or digit, at most 100 characters. With no '/' and no leading '.', the name can be
# neither absolute nor '.' or '..', so results/<name> is always a child of results/ (and 'a..b' is harmless).
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
STUDY_NAME_RULE = "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"


@dataclass
class StudySettings:
    name: str
    space: dict  # the space file's tables, as loaded (the study keeps its own copy)
    space_source: str
    storage: str
    objectives: str = "bpb"
    sampler: str = "tpe"
    sampler_seed: int | None = None
    trials: int = 10
    timeout: float | None = None
    workers: int = 1
    backend: str = "local"  # local | tune
    address: str | None = None  # the Ray cluster's (tune); None: a Ray started on this machine
    scheduler: str = "fifo"  # tune: fifo (the space's Optuna pruner inside each trial) | asha (Tune's)
    gpus_per_trial: float | None = None  # tune: None = 1 where the cluster has GPUs, else 0
    cpus_per_trial: float | None = None  # tune: None = the cluster's CPUs / workers
    ranks_per_trial: int = 1  # DDP ranks each trial trains with (search/ranks.py)
    data: str | None = None  # the data root, made absolute when the study starts: a resume reads the same data
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))

    @property
    def directions(self) -> list[str]:
        return ["minimize"] if self.objectives == "bpb" else ["minimize", "minimize"]


def check_study_name(name: str) -> str:
    """`name` if it follows STUDY_NAME_RULE, else a StudyError that states the rule."""
    if not STUDY_NAME.fullmatch(name):
        shown = repr(name[:100]) + ("..." if len(name) > 100 else "")
        raise StudyError(f"study name {shown} is not allowed: a name is {STUDY_NAME_RULE}")
    return name


def study_dir(name: str, root: str | None = None) -> str:
    """results/<name>: every command that takes a study name comes through here, so the name is checked here."""
    return os.path.join(root or RESULTS_DIR, check_study_name(name))


def study_command(command: str, name: str, root: str | None = None) -> str:
    """`search COMMAND NAME`, with --results when the study is not under the default results folder."""
    results = "" if os.path.abspath(root or RESULTS_DIR) == os.path.abspath(RESULTS_DIR) else f" --results {shlex.quote(root)}"
    return f"`search {command} {name}{results}`"


def absolute_storage(url: str) -> str:
    """`url` with a relative file path (sqlite:///rel.db, journal://rel.log) made absolute against the working
    directory, so the study keeps a URL that means the same file from any folder; other URLs unchanged."""
    path = storage_file(url)
    if path is None or os.path.isabs(path):
        return url
    absolute = os.path.abspath(os.path.expanduser(path))
    if url.startswith("sqlite:///"):
        return "sqlite:///" + absolute + url[len("sqlite:///") + len(path):]  # the query string, if any, kept
    return "journal://" + absolute


def storage_file(url: str) -> str | None:
    """The file a SQLite or journal URL names (None for a database server or an in-memory SQLite)."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].split("?", 1)[0]
        return None if path in ("", ":memory:") else path
    if url.startswith("journal://"):
        path = url[len("journal://"):]
        return path[1:] if path.startswith("//") else path
    return None


def default_storage(directory: str, workers: int) -> str:
    if workers > 1:
        return f"journal:///{os.path.abspath(os.path.join(directory, 'journal.log'))}"
    return f"sqlite:///{os.path.abspath(os.path.join(directory, 'study.db'))}"


# A database storage (PostgreSQL, MySQL) keeps a heartbeat per running trial, recorded by the coordinator that
# runs it; one silent for STALE_SECONDS was left by a coordinator that died, on any machine, and recover_stale
# fails it and queues it again (on one machine the owner's process identity tells that at once).
HEARTBEAT_SECONDS = 20
STALE_SECONDS = 120
# Optuna warns on every ask from a storage with heartbeats outside Study.optimize: here the coordinator beats.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def open_storage(url: str, stale_seconds: float = STALE_SECONDS):
    """An Optuna storage for a URL; a bad URL or unreachable database is one clear StudyError."""
    try:
        if url.startswith("journal://"):
            from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

            path = storage_file(url)
            if not os.path.isdir(os.path.dirname(path) or "."):
                raise StudyError(f"storage {url}: folder {os.path.dirname(path)} does not exist")
            return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path, grace_period=30)))
        if "://" not in url:
            raise StudyError(f"storage {url!r} is not a URL (e.g. sqlite:///study.db, postgresql://host/db, journal:///path.log)")
        if url.startswith("sqlite"):  # one worker on one machine: no heartbeat needed
            return optuna.storages.RDBStorage(url)
        with warnings.catch_warnings():  # heartbeats are still marked experimental in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=HEARTBEAT_SECONDS,
                                              grace_period=stale_seconds)
    except StudyError:
        raise
    except Exception as exc:  # SQLAlchemy/driver errors vary by backend; all mean "this storage is unusable"
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudyError(f"cannot open storage {url}: {message}") from None


def study_pruner(settings: StudySettings):
    """The pruner of the study's own space ([search] table); none if that space no longer loads (status, export
    and the pages, which never prune, still open such a study; `search resume` refuses it elsewhere)."""
    from search.budget.fidelity import PrunerSpec
    from space.spec import space_from_dict

    try:
        return PrunerSpec.of(space_from_dict(settings.space, source=settings.space_source), settings.objectives).optuna_pruner()
    except SpaceError:
        return optuna.pruners.NopPruner()


def _space_dims(settings: StudySettings) -> list:
    """The dimensions of the study's own space in file order (greedy selection's visiting order); none if the
    space no longer loads (only `search resume` samples, and it refuses such a study first)."""
    from space.spec import space_from_dict

    try:
        return space_from_dict(settings.space, source=settings.space_source).dims
    except SpaceError:
        return []


def save_settings(directory: str, settings: StudySettings) -> None:
    path = os.path.join(directory, STUDY_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(settings.__dict__, f, indent=2)
    os.replace(path + ".tmp", path)


def load_settings(name: str, root: str | None = None) -> tuple[str, StudySettings]:
    directory = study_dir(name, root)
    path = os.path.join(directory, STUDY_FILE)
    if not os.path.exists(path):
        known = sorted(d for d in os.listdir(root or RESULTS_DIR) if os.path.exists(os.path.join(root or RESULTS_DIR, d, STUDY_FILE))) \
            if os.path.isdir(root or RESULTS_DIR) else []
        raise StudyError(f"no study {name!r} under {root or RESULTS_DIR}/" + (f" (studies: {', '.join(known)})" if known else ""))
    settings = read_json(path, "study settings")  # names the file and what is wrong with it
    try:
        return directory, StudySettings(**settings)
    except TypeError as exc:
        raise StudyError(f"{path} is damaged ({exc})") from None


def startup_trials(trials: int) -> int:
    """Trials sampled before TPE models the space: a quarter of the budget, between 3 and 10."""
    return min(10, max(3, trials // 4))


def open_existing_study(name: str, root: str | None = None) -> tuple[str, StudySettings, optuna.Study]:
    """(folder, settings, Optuna study) of a study on disk: how status, pareto, report, export and confirm open it."""
    directory, settings = load_settings(name, root)
    return directory, settings, open_study(settings, startup_trials(settings.trials), create=False)


def open_study(settings: StudySettings, startup_trials: int, create: bool) -> optuna.Study:
    path = storage_file(settings.storage)
    if not create and path is not None and not os.path.isfile(path):
        # Opening it would create an empty file here and then not find the study in it.
        where = "" if os.path.isabs(path) else (" (a relative path in study.json, meaning the folder the study was "
                                                 "started in; run from there, or write the absolute path into study.json)")
        raise StudyError(f"study {settings.name!r}: its storage file {path} does not exist{where}")
    storage = open_storage(settings.storage)
    sampler = make_sampler(settings.sampler, settings.sampler_seed, settings.objectives, startup_trials,
                           lambda: _space_dims(settings))
    try:
        if create:
            study = optuna.create_study(study_name=settings.name, storage=storage, directions=settings.directions,
                                        sampler=sampler, pruner=study_pruner(settings))
            # Named values: optuna-dashboard and Optuna's plots then say "val_bpb", not "Objective 0".
            # set_metric_names is still marked experimental: no warning line for each new study.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(METRIC_NAMES[settings.objectives])
            return study
        return optuna.load_study(study_name=settings.name, storage=storage, sampler=sampler, pruner=study_pruner(settings))
    except optuna.exceptions.DuplicatedStudyError:
        # A study.json beside it is caught before this, so there is no folder here that `search resume` could use.
        raise StudyError(f"study {settings.name!r} already exists in storage {settings.storage} but has no study.json "
                         f"here: choose another --study name") from None
    except KeyError:
        raise StudyError(f"study {settings.name!r} is not in storage {settings.storage}") from None


def storage_trial_id(trial) -> int:
    """A trial's id in its storage, which storage calls and optuna.trial.Trial(study, id) take (its `number` is
    unique within a study only)."""
    return trial._trial_id  # Optuna 5.1 exposes the id on neither Trial nor FrozenTrial


def trial_dir(directory: str, number: int) -> str:
    return os.path.join(directory, TRIALS_DIR, f"{number:04d}")


def trial_data(directory: str, number: int) -> dict:
    """The data paths (train/val shards, tokenizer) a trial trained and was scored on."""
    request = read_json(os.path.join(trial_dir(directory, number), "request.json"), f"trial {number}'s request")
    if not isinstance(request.get("data"), dict):
        raise StudyError(f"trial {number}'s request.json names no data: the trial folder was changed")
    return request["data"]


def check_space_snapshot(settings: StudySettings):
    from space.spec import space_from_dict

    try:
        return space_from_dict(settings.space, source=settings.space_source)
    except SpaceError as exc:
        raise StudyError(f"study {settings.name!r}: its stored space no longer loads ({exc})") from None
