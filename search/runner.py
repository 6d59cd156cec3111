"""Starting and resuming studies: check everything, create the study, hand over to the coordinator."""

import dataclasses
import os
import shutil
import time

from objectives.bytes import load_calibration
from pgolf.config import ConfigError
from pgolf.datasets import DataError, ShardsWithoutTokenizer, default_data_root, resolve_data
from pgolf.submission import parse_device
from pgolf.train import batch_plan
from search.backends import backend_class, make_backend
from search.budget.stepbudget import measure_for_space, study_calibration, write_calibration
from search.coordinator import Coordinator, predict_min_bytes, recover_stale
from search.study import (StudyError, StudySettings, default_storage, load_settings, open_study, save_settings,
                          startup_trials, study_command, study_dir, check_space_snapshot, STUDY_FILE)
from space.sample import ParamSource, check_dimension_values, suggest_config
from space.spec import SpaceError, check_ranks_per_trial, load_space


class DataResolver:
    """DataPaths per vocab size (tokenizers and shards are built once, then cached)."""

    def __init__(self, root: str):
        self.root = root
        self.cache = {}

    def __call__(self, vocab_size: int):
        if vocab_size not in self.cache:
            try:
                self.cache[vocab_size] = resolve_data(self.root, vocab_size)
            except ShardsWithoutTokenizer:
                # A study may sample several vocab sizes, so it takes a data root, not one shard folder + tokenizer.
                raise DataError(f"{self.root} is a folder of shards: a study's --data is a data root holding "
                                f"tokenizers/ and datasets/<name>_sp<vocab>/ (the layout `pgolf data fetch` writes)") from None
        return self.cache[vocab_size]


def smallest_config(space):
    """The config with every dimension at its smallest value: if it cannot fit, nothing can."""
    params = {d.key: d.values_bound()[0] for d in space.dims}
    return suggest_config(space, ParamSource(params))[0]


def check_caps_reachable(space) -> None:
    calibration = load_calibration()
    config = smallest_config(space)
    smallest = predict_min_bytes(config, space, calibration)
    if smallest > space.caps.artifact_bytes:
        raise SpaceError(f"no configuration of space {space.name!r} can meet the {space.caps.artifact_bytes:,}-byte cap: "
                         f"the smallest one needs about {smallest:,} bytes at the cheapest allowed allocation")


def _data_root(args, space, started_with: str | None = None) -> str:
    """--data, else the root the study started with, else the space's run.data, else the default; absolute,
    so that a resume from another working directory reads the same data."""
    return os.path.abspath(args.data or started_with or space.data or default_data_root())


def _with_reruns(args, space):
    """The space with --rerun-top / --rerun-seeds / --promote-ranks applied (for this invocation; the stored space is unchanged)."""
    changes = {k: getattr(args, k) for k in ("rerun_top", "rerun_seeds", "promote_ranks") if getattr(args, k, None) is not None}
    if not changes:
        return space
    return dataclasses.replace(space, search=dataclasses.replace(space.search, **changes))  # the parser checked them


def _tune_options(args, space, settings=None) -> dict:
    """The Tune scheduler and per-trial resources: flags, else the stored study's, else the space's run table."""
    options = {}
    for key in ("scheduler", "gpus_per_trial", "cpus_per_trial"):
        value = getattr(args, key, None)
        if value is None:
            value = getattr(settings, key) if settings is not None else getattr(space, key, None)
        if value is not None:
            options[key] = value
    return options  # flags are range-checked by the parser, the space's values by the space loader


def _ranks_per_trial(args, space, settings=None) -> int:
    """--ranks-per-trial, else the stored study's, else the space's run.ranks_per_trial."""
    if getattr(args, "ranks_per_trial", None) is not None:
        if space.script is not None:
            raise SpaceError("--ranks-per-trial is for engine spaces: a script space sets its ranks in [script] ranks")
        return check_ranks_per_trial(args.ranks_per_trial, "--ranks-per-trial")
    return settings.ranks_per_trial if settings is not None else space.ranks_per_trial


def check_run_options(settings, args, space) -> None:
    """The backend's own option checks; on the local backend, a device this machine lacks, or more GPUs for the
    concurrent trials than it shows, fails here, before anything is stored, not as failed trials (a Tune head may
    have no GPU where its nodes do). A base config whose step does not split over the trial's ranks fails here too."""
    backend_class(settings.backend).check_options(settings)
    promote = space.search.promote_ranks
    if promote and space.search.rerun_top < 1:
        raise SpaceError(f"search.promote_ranks {promote} needs search.rerun_top >= 1 (the configurations it promotes)")
    if promote and (promote <= settings.ranks_per_trial or space.script is not None):
        raise SpaceError(f"search.promote_ranks {promote} must be above the {settings.ranks_per_trial} ranks per trial the "
                         f"study samples with (an engine space's run.ranks_per_trial or --ranks-per-trial)")
    for ranks in sorted({settings.ranks_per_trial, promote} - {0, 1}) if space.script is None else ():
        try:
            batch_plan(space.base.train, ranks)
        except ConfigError as exc:
            raise SpaceError(f"{ranks} ranks per trial: {exc}") from None
    if settings.backend == "local" and _device(args, space):
        parse_device(_device(args, space))
    if settings.backend == "local":
        from search.backends.devices import gpus_per_trial

        gpus_per_trial(settings, space, _device(args, space))


def probe_threads(settings) -> int:
    """CPU threads of the step-budget probes: a local trial's (the machine's cores shared by the workers)."""
    return max(1, (os.cpu_count() or 1) // max(settings.workers, 1))


def _device(args, space) -> str | None:
    device = args.device or space.device
    return None if device == "auto" else device


def start_study(args) -> None:
    space = _with_reruns(args, load_space(args.space))
    name = args.study or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        directory = study_dir(name, args.results)
    except StudyError as exc:
        if args.study:
            raise
        raise StudyError(f"{exc} (the default name starts with the space's name {space.name!r}): pass --study NAME") from None
    if os.path.exists(os.path.join(directory, STUDY_FILE)):
        raise StudyError(f"study {name!r} already exists in {directory}: use {study_command('resume', name, args.results)}")
    data = DataResolver(_data_root(args, space))
    if space.script is None:  # a script space was checked as it loaded (space/script.py); its script reads its own data
        check_dimension_values(space)
        check_caps_reachable(space)
        for vocab in sorted({smallest_config(space).model.vocab_size, space.base.model.vocab_size}):
            data(vocab)  # bad data fails here, before anything is stored
    workers = args.workers or 1
    settings = StudySettings(name=name, space=_raw_space(space), space_source=space.source,
                             storage=args.storage or default_storage(directory, workers), objectives=args.objectives,
                             sampler=args.sampler, sampler_seed=args.sampler_seed, trials=args.trials or space.trials,
                             timeout=args.timeout if args.timeout is not None else space.timeout, workers=workers, backend=args.backend or "local", address=args.address,
                             data=data.root, ranks_per_trial=_ranks_per_trial(args, space), **_tune_options(args, space))
    if settings.storage.startswith("sqlite") and workers > 1:
        raise StudyError("SQLite storage is for one worker: leave --storage unset or give a journal:/// or database URL")
    check_run_options(settings, args, space)
    backend = make_backend(settings)  # a Ray cluster that is not there, or too small, fails before anything is stored
    # A cap in a reference machine's seconds: the speed ratio is measured once, before anything is stored.
    speed = measure_for_space(space, _device(args, space), probe_threads(settings)) if space.caps.train_reference else None
    created = not os.path.exists(directory)
    os.makedirs(directory, exist_ok=True)
    try:
        study = open_study(settings, startup_trials(settings.trials), create=True)
    except StudyError:
        if created:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    if space.baseline:
        study.enqueue_trial(space.baseline, user_attrs={"baseline": True})
    save_settings(directory, settings)
    if speed is not None:
        write_calibration(directory, speed)
    print(f"study {name}: space {space.name}, {settings.trials} trials, sampler {settings.sampler}, objectives "
          f"{settings.objectives}, storage {settings.storage}, backend {settings.backend} x{workers}"
          f"{f' x {settings.ranks_per_trial} ranks' if settings.ranks_per_trial > 1 else ''}, caps "
          f"{space.caps.artifact_bytes:,} bytes / train {space.caps.train_seconds:g}s / eval {space.caps.eval_seconds:g}s")
    Coordinator(directory, settings, space, study, data, _device(args, space), backend=backend).run()
    print(f"results in {directory}; {study_command('status', name, args.results)} for the table")


def resume_study(args) -> None:
    directory, settings = load_settings(args.name, args.results)
    space = _with_reruns(args, check_space_snapshot(settings))
    for key in ("trials", "timeout", "workers", "backend", "address"):
        if getattr(args, key, None) is not None:
            setattr(settings, key, getattr(args, key))
    for key, value in _tune_options(args, space, settings).items():
        setattr(settings, key, value)
    settings.ranks_per_trial = _ranks_per_trial(args, space, settings)
    if settings.storage.startswith("sqlite") and settings.workers > 1:
        raise StudyError(f"study {settings.name!r} uses SQLite, which is for one worker: resume with --workers 1")
    check_run_options(settings, args, space)
    settings.data = _data_root(args, space, settings.data)  # kept, like the other overrides
    study = open_study(settings, startup_trials(settings.trials), create=False)
    recover_stale(study, directory)
    save_settings(directory, settings)
    study_calibration(directory, space, _device(args, space), probe_threads(settings))  # the stored one; measured if missing
    data = DataResolver(settings.data)
    Coordinator(directory, settings, space, study, data, _device(args, space)).run()
    print(f"results in {directory}; {study_command('status', settings.name, args.results)} for the table")


def _raw_space(space) -> dict:
    """The space's tables as a dict that space_from_dict reads back (kept in study.json)."""
    import tomllib

    with open(space.source, "rb") as f:
        return tomllib.load(f)
