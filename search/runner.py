"""Starting and resuming studies: check everything, create the study, hand over to the coordinator."""

import dataclasses
import os
import shutil
import time

from objectives.bytes import load_calibration, predict_artifact_bytes
from pgolf.datasets import default_data_root, resolve_data
from search.coordinator import Coordinator, cheapest_quant, recover_stale
from search.study import (StudyError, StudySettings, default_storage, load_settings, open_study, save_settings,
                          study_dir, check_space_snapshot, STUDY_FILE)
from space.sample import ParamSource, suggest_config
from space.spec import SpaceError, load_space


class DataResolver:
    """DataPaths per vocab size (tokenizers and shards are built once, then cached)."""

    def __init__(self, root: str):
        self.root = root
        self.cache = {}

    def __call__(self, vocab_size: int):
        if vocab_size not in self.cache:
            self.cache[vocab_size] = resolve_data(self.root, vocab_size)
        return self.cache[vocab_size]


def startup_trials(trials: int) -> int:
    """Trials sampled before TPE models the space: a quarter of the budget, between 3 and 10."""
    return min(10, max(3, trials // 4))


def smallest_config(space):
    """The config with every dimension at its smallest value: if it cannot fit, nothing can."""
    params = {d.key: d.values_bound()[0] for d in space.dims}
    return suggest_config(space, ParamSource(params))[0]


def check_caps_reachable(space) -> None:
    calibration = load_calibration()
    config = smallest_config(space)
    smallest = predict_artifact_bytes(dataclasses.replace(config, quant=cheapest_quant(space, calibration)), calibration)
    if smallest > space.caps.artifact_bytes:
        raise SpaceError(f"no configuration of space {space.name!r} can meet the {space.caps.artifact_bytes:,}-byte cap: "
                         f"the smallest one needs about {smallest:,} bytes at the cheapest allowed allocation")


def _data_root(args, space) -> str:
    if args.data:
        return args.data
    if space.data:
        return space.data if os.path.isabs(space.data) else os.path.join(os.path.dirname(space.source), space.data)
    return default_data_root()


def _device(args, space) -> str | None:
    device = args.device or space.device
    return None if device == "auto" else device


def start_study(args) -> None:
    space = load_space(args.space)
    check_caps_reachable(space)
    data = DataResolver(_data_root(args, space))
    for vocab in sorted({smallest_config(space).model.vocab_size, space.base.model.vocab_size}):
        data(vocab)  # bad data fails here, before anything is stored
    name = args.study or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    directory = study_dir(name, args.results)
    if os.path.exists(os.path.join(directory, STUDY_FILE)):
        raise StudyError(f"study {name!r} already exists in {directory}: use `search resume {name}`")
    workers = args.workers or 1
    settings = StudySettings(name=name, space=_raw_space(space), space_source=space.source,
                             storage=args.storage or default_storage(directory, workers), objectives=args.objectives,
                             sampler=args.sampler, sampler_seed=args.sampler_seed, trials=args.trials or space.trials,
                             timeout=args.timeout if args.timeout is not None else space.timeout, workers=workers, backend=args.backend or "local", address=args.address)
    if settings.storage.startswith("sqlite") and workers > 1:
        raise StudyError("SQLite storage is for one worker: leave --storage unset or give a journal:/// or database URL")
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
    print(f"study {name}: space {space.name}, {settings.trials} trials, sampler {settings.sampler}, objectives "
          f"{settings.objectives}, storage {settings.storage}, backend {settings.backend} x{workers}, caps "
          f"{space.caps.artifact_bytes:,} bytes / train {space.caps.train_seconds:g}s / eval {space.caps.eval_seconds:g}s")
    Coordinator(directory, settings, space, study, data, _device(args, space)).run()
    print(f"results in {directory}; `search status {name}` for the table")


def resume_study(args) -> None:
    directory, settings = load_settings(args.name, args.results)
    space = check_space_snapshot(settings)
    for key in ("trials", "timeout", "workers", "backend", "address"):
        if getattr(args, key, None) is not None:
            setattr(settings, key, getattr(args, key))
    if settings.storage.startswith("sqlite") and settings.workers > 1:
        raise StudyError(f"study {settings.name!r} uses SQLite, which is for one worker: resume with --workers 1")
    study = open_study(settings, startup_trials(settings.trials), create=False)
    recover_stale(study, directory)
    save_settings(directory, settings)
    data = DataResolver(_data_root(args, space))
    Coordinator(directory, settings, space, study, data, _device(args, space)).run()
    print(f"results in {directory}; `search status {settings.name}` for the table")


def _raw_space(space) -> dict:
    """The space's tables as a dict that space_from_dict reads back (kept in study.json)."""
    import tomllib

    with open(space.source, "rb") as f:
        return tomllib.load(f)
