"""Search spaces as data: what may vary, the caps a trial must meet, and how weights may be stored.

A space file (TOML) has these tables:
    name, description     strings
    trials, timeout       defaults for `search run` (finished trials; seconds after which no trial starts)
    [caps]                artifact_bytes, train_seconds, eval_seconds: the hard constraints; train_reference: a
                          machine whose seconds train_seconds counts ("8xH100", or a table file; "" = this one's)
    [run]                 base (a shipped config name, or a TOML path relative to the space file),
                          data (a data root; "" = PGOLF_DATA, else ../shared/data beside the checkout),
                          device ("auto" | "cpu" | "cuda"), gpus_per_trial, cpus_per_trial (the tune backend's
                          resources per trial; unset = 1 GPU where the cluster has GPUs, its CPUs / workers),
                          ranks_per_trial (DDP ranks per trial, default 1: one GPU each on CUDA, a share of the
                          cores each on CPU; `search run --ranks-per-trial` overrides it)
    [base.<section>]      values set on top of the base config for every trial
    [dims."section.key"]  one search dimension per config key: {choices = [...]} or
                          {low, high, step?, log?} (ints if low and high are ints)
    [baseline]            "section.key" = value: the baseline-shaped point, enqueued as the first trial
    [allocation]          what the post-training allocation may choose (see AllocationSpace)
Rules that keep sampled configs valid (see space/sample.py): a shared segment's length and start exist
only when loop_repeats > 1; num_kv_heads is lowered to a divisor of num_heads; model_dim is rounded to
a multiple of 2 x num_heads (even head dim for RoPE).
A relative run.data is relative to the working directory, like every --data flag, in every space file: the
shipped presets live inside the package, where no data is, and a preset copied elsewhere to be edited keeps
meaning the same data (./data, where `pgolf data fetch` writes by default). A study makes it absolute when
it starts and keeps it, so `search resume` reads the same data from any folder.
"""

import math
import os
import tomllib

from pgolf.config import COMPRESSORS, MAX_NGRAM_ORDER, MAX_TTT_RANK, QUANT_BITS_ALLOWED, ROW_ORDERS, ConfigError, RunConfig, compressor_missing, config_from_dict, config_to_dict
from pgolf.configfiles import resolve_config
from pgolf.storage import FORMAT_AXES
# The space's types and table readers (space/core.py, shared with space/script.py), importable from here as before.
from space.core import (CONDITIONAL_DIMS, PRUNERS, AllocationSpace, Caps, Dimension, SearchPlan, Space, SpaceError, _check_baseline,
                        _dataclass_from, _table, _typed, search_plan_from_dict, check_range)

PRESET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")
GRANULARITIES = ("kind", "layer", "tensor")
SENSITIVITY_METHODS = ("forward", "fisher")
EVAL_CHOICES = ("sequential", "joint")  # how the allocation picks the evaluation settings: search/allocation/


def config_keys() -> dict:
    """Every "section.key" of a RunConfig, with its default value."""
    return {f"{section}.{key}": value for section, values in config_to_dict(RunConfig()).items() for key, value in values.items()}


def _check_dimension_values(where: str, dim: Dimension, default) -> None:
    """Each value a dimension can take has the config key's type, and a number is >= 0 (every numeric config
    key is): caught here, not as a trial that fails or a value silently repaired into another."""
    values = dim.choices if dim.choices is not None else [v for v in (dim.low, dim.high) if v is not None]
    for value in values:
        if isinstance(default, bool) or isinstance(default, str):
            if type(value) is not type(default):
                raise SpaceError(f"{where}: {value!r} is not a {type(default).__name__} like the key's default {default!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpaceError(f"{where}: {value!r} is not a number")
        elif isinstance(default, int) and not isinstance(value, int):
            raise SpaceError(f"{where}: {value!r} is not an integer (the key takes integers)")
        elif value < 0:
            raise SpaceError(f"{where}: {value!r} is negative (every numeric config key is >= 0)")


def _nonfinite_number(value, where: str) -> str | None:
    """The first key under `value` holding nan or inf (TOML allows both; no space value means them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _nonfinite_number(item, f"{where}.{key}" if isinstance(value, dict) else f"{where}[{key}]")
        if found:
            return found
    return None


def _dimension(key: str, spec) -> Dimension:
    where = f"dims.{key!r}"
    keys = config_keys()
    if key not in keys:
        raise SpaceError(f"{where}: {key!r} is not a config key (e.g. model.model_dim, train.matrix_lr)")
    if key == "train.seed":
        raise SpaceError(f"{where}: the seed is never a search dimension (the challenge forbids brute-forcing seeds)")
    if isinstance(keys[key], dict):
        raise SpaceError(f"{where}: per-tensor bits and clips are chosen by [allocation], not by a dimension")
    dim = _dataclass_from(where, Dimension, spec)
    dim.key = key
    _check_dimension_values(where, dim, keys[key])
    if dim.choices is not None:
        if not dim.choices:
            raise SpaceError(f"{where}: choices is empty")
        if dim.low is not None or dim.high is not None:
            raise SpaceError(f"{where}: give either choices or low/high, not both")
        return dim
    check_range(where, dim)
    return dim


def _check_formats(alloc: AllocationSpace) -> None:
    """The format lists against their axes (pgolf/storage.py's FORMAT_AXES)."""
    for axis in FORMAT_AXES:
        values = getattr(alloc, axis.space_key)
        if not axis.per_tensor:
            if not axis.valid(values):
                raise SpaceError(f"allocation.{axis.space_key} must be {axis.rule}, got {values}")
        elif not values or not all(axis.valid(v) for v in values):
            raise SpaceError(f"allocation.{axis.space_key} must list {axis.rule_many}, got {values}")


def allocation_from_dict(values: dict) -> AllocationSpace:
    alloc = _dataclass_from("allocation", AllocationSpace, values)
    for key in ("bits", "embedding_bits"):
        options = getattr(alloc, key)
        if not options or any(b not in QUANT_BITS_ALLOWED for b in options):
            raise SpaceError(f"allocation.{key} must list widths from {', '.join(map(str, QUANT_BITS_ALLOWED))}, got {options}")
    if not alloc.clip or any(not isinstance(k, (int, float)) or k < 0 for k in alloc.clip):
        raise SpaceError(f"allocation.clip must list non-negative multipliers, got {alloc.clip}")
    if alloc.granularity not in GRANULARITIES:
        raise SpaceError(f"allocation.granularity must be one of {', '.join(GRANULARITIES)}, got {alloc.granularity!r}")
    if any(not isinstance(r, int) or r < 1 for r in alloc.eval_repeats):
        raise SpaceError(f"allocation.eval_repeats must list positive integers, got {alloc.eval_repeats}")
    if not alloc.eval_stride or any(not isinstance(s, int) or s < 0 for s in alloc.eval_stride):
        raise SpaceError(f"allocation.eval_stride must list non-negative integers, got {alloc.eval_stride}")
    if not alloc.compressors or any(c not in COMPRESSORS for c in alloc.compressors):
        raise SpaceError(f"allocation.compressors must list {' / '.join(COMPRESSORS)}, got {alloc.compressors}")
    missing = [compressor_missing(c) for c in alloc.compressors if compressor_missing(c)]
    if missing:
        raise SpaceError(f"allocation.compressors: {missing[0]}")
    if any(o not in ROW_ORDERS for o in alloc.row_orders):
        raise SpaceError(f"allocation.row_orders must list {' / '.join(ROW_ORDERS)}, got {alloc.row_orders}")
    _check_formats(alloc)
    if any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in alloc.ttt_chunk):
        raise SpaceError(f"allocation.ttt_chunk must list positive chunk lengths in tokens, got {alloc.ttt_chunk}")
    if not alloc.ttt_rank or any(not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= MAX_TTT_RANK for r in alloc.ttt_rank):
        raise SpaceError(f"allocation.ttt_rank must list LoRA ranks in [1, {MAX_TTT_RANK}], got {alloc.ttt_rank}")
    if any(not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_NGRAM_ORDER for n in alloc.ngram_order):
        raise SpaceError(f"allocation.ngram_order must list n-gram orders in [0, {MAX_NGRAM_ORDER}] (0 = no tilt), got {alloc.ngram_order}")
    if alloc.eval_choice not in EVAL_CHOICES:
        raise SpaceError(f"allocation.eval_choice must be one of {', '.join(EVAL_CHOICES)}, got {alloc.eval_choice!r}")
    if alloc.ngram_order and alloc.eval_choice != "joint" and any(alloc.ngram_order):
        raise SpaceError("allocation.ngram_order needs allocation.eval_choice = \"joint\" (the sequential choice has no tilt step)")
    if alloc.sensitivity not in SENSITIVITY_METHODS:
        raise SpaceError(f"allocation.sensitivity must be one of {', '.join(SENSITIVITY_METHODS)}, got {alloc.sensitivity!r}")
    if alloc.calib_tokens < 1024 or alloc.confirm_top < 1:
        raise SpaceError("allocation.calib_tokens must be at least 1024 and allocation.confirm_top at least 1")
    return alloc


def space_from_dict(data: dict, source: str = "") -> Space:
    data = dict(_table("space", data))
    found = _nonfinite_number(data, "space")
    if found:
        raise SpaceError(f"{found.removeprefix('space.')} is not a finite number (nan and inf mean nothing in a space file)")
    if "script" in data:  # trials run a user's training script: space/script.py reads the rest
        from space.script import script_space_from_dict

        return script_space_from_dict(data, source)
    known = {"name", "description", "trials", "timeout", "caps", "run", "base", "dims", "baseline", "allocation", "search"}
    for key in data:
        if key not in known:
            raise SpaceError(f"unknown key {key!r} in space file (known: {', '.join(sorted(known))})")
    caps = _dataclass_from("caps", Caps, data.get("caps", {}))
    if caps.artifact_bytes <= 0 or caps.train_seconds <= 0 or caps.eval_seconds <= 0:
        raise SpaceError("caps.artifact_bytes, caps.train_seconds and caps.eval_seconds must be positive")
    if not isinstance(caps.eval_ranks, int) or isinstance(caps.eval_ranks, bool) or caps.eval_ranks < 0:
        raise SpaceError(f"caps.eval_ranks must be a rank count (0 = as measured), got {caps.eval_ranks!r}")
    run = _table("run", data.get("run", {}))
    for key in run:
        if key not in ("base", "data", "device", "gpus_per_trial", "cpus_per_trial", "ranks_per_trial"):
            raise SpaceError(f"unknown key run.{key}")
    resources = {key: _typed(f"run.{key}", run[key], float) for key in ("gpus_per_trial", "cpus_per_trial") if key in run}
    if resources.get("gpus_per_trial", 0) < 0 or resources.get("cpus_per_trial", 1) <= 0:
        raise SpaceError(f"run.gpus_per_trial must be >= 0 and run.cpus_per_trial > 0, got {resources}")
    ranks = check_ranks_per_trial(_typed("run.ranks_per_trial", run.get("ranks_per_trial", 1), int), "run.ranks_per_trial")
    device = _typed("run.device", run.get("device", "auto"), str)
    if device not in ("auto", "cpu", "cuda"):
        raise SpaceError(f"run.device must be auto, cpu or cuda, got {device!r}")
    base_dir = os.path.dirname(source) if source else ""
    base_name = _typed("run.base", run.get("base", "baseline"), str)
    base_path = os.path.join(base_dir, base_name) if base_name.endswith(".toml") else base_name
    try:
        base = resolve_config(base_path)
        merged = config_to_dict(base)
        for section, values in _table("base", data.get("base", {})).items():
            if section not in merged:
                raise SpaceError(f"unknown config section [base.{section}]")
            merged[section].update(_table(f"base.{section}", values))
        base = config_from_dict(merged)
    except ConfigError as exc:
        raise SpaceError(f"base config: {exc}") from None
    dims = [_dimension(key, _table(f"dims.{key!r}", spec)) for key, spec in _table("dims", data.get("dims", {})).items()]
    baseline = dict(_table("baseline", data.get("baseline", {})))
    space = Space(name=_typed("name", data.get("name", os.path.splitext(os.path.basename(source))[0] or "space"), str),
                  description=_typed("description", data.get("description", ""), str), caps=caps, base=base, dims=dims,
                  baseline=baseline, allocation=allocation_from_dict(data.get("allocation", {})),
                  data=_typed("run.data", run.get("data", ""), str), device=device, source=source, **resources, ranks_per_trial=ranks,
                  trials=_typed("trials", data.get("trials", 10), int),
                  timeout=_typed("timeout", data["timeout"], float) if "timeout" in data else None,
                  search=search_plan_from_dict(data.get("search", {})))
    if space.search.proxy_seconds and space.search.proxy_seconds >= (space.search.target_seconds or caps.train_seconds):
        raise SpaceError(f"search.proxy_seconds {space.search.proxy_seconds:g} must be below the target budget "
                         f"({space.search.target_seconds or caps.train_seconds:g} s)")
    if space.search.pruner in ("successive_halving", "hyperband") and space.base.train.val_every_seconds <= 0:
        raise SpaceError(f"search.pruner {space.search.pruner!r} needs validation reports: set base.train.val_every_seconds "
                         "(or search.pruner = \"none\")")
    if space.trials < 1 or (space.timeout is not None and space.timeout <= 0):
        raise SpaceError("trials must be at least 1 and timeout positive")
    _check_baseline(space)
    if caps.train_reference:
        _check_reference(space)
    if not space.dim("eval.seq_len") and not space.dim("train.seq_len"):
        longer = [c for c in space.allocation.ttt_chunk if c > base.eval_seq_len()]
        if longer:
            raise SpaceError(f"allocation.ttt_chunk {longer} longer than the eval sequence length {base.eval_seq_len()}: "
                             "a chunk is scored by windows of that length")
    return space


def check_ranks_per_trial(ranks: int, where: str) -> int:
    """The one check of a trial's rank count, for the space key and the `search run` flag alike."""
    if ranks < 1:
        raise SpaceError(f"{where} must be at least 1, got {ranks}")
    return ranks


def _check_reference(space: Space) -> None:
    """A cap in a reference machine's seconds: the machine gives a speed ratio, and nothing else fixes the trials' budget."""
    from search.budget.references import reference_machine

    reference_machine(space.caps.train_reference, os.path.dirname(space.source) if space.source else "")
    plan = space.search
    if plan.proxy_steps or plan.proxy_seconds:
        raise SpaceError("caps.train_reference and search.proxy_steps / proxy_seconds: not both (the reference machine's "
                         "seconds already fix each trial's steps)")


def presets() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(PRESET_DIR) if f.endswith(".toml"))


def load_space(name_or_path: str) -> Space:
    """A space from a TOML file, or a shipped preset by name ("demo", "challenge")."""
    path = name_or_path
    if not os.path.exists(path):
        if name_or_path not in presets():
            raise SpaceError(f"no space file {name_or_path!r} and no preset of that name (presets: {', '.join(presets())})")
        path = os.path.join(PRESET_DIR, f"{name_or_path}.toml")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise SpaceError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise SpaceError(f"{path}: not a TOML space file (binary, not UTF-8 text)") from None
    except OSError as exc:
        raise SpaceError(f"cannot read space file {path}: {exc.strerror}") from None
    if not data:  # all defaults would be a study of the baseline at the challenge caps: not what an empty file means
        raise SpaceError(f"{path}: space file is empty")
    try:
        return space_from_dict(data, source=os.path.abspath(path))
    except SpaceError as exc:
        raise SpaceError(f"{path}: {exc}") from None
