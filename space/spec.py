"""Search spaces as data: what may vary, the caps a trial must meet, and how weights may be stored.

A space file (TOML) has these tables:
    name, description     strings
    trials, timeout       defaults for `search run` (finished trials; seconds after which no trial starts)
    [caps]                artifact_bytes, train_seconds, eval_seconds: the hard constraints
    [run]                 base (a shipped config name, or a TOML path relative to the space file),
                          data (a data root; "" = PGOLF_DATA, else ../shared/data beside the checkout),
                          device ("auto" | "cpu" | "cuda"), gpus_per_trial, cpus_per_trial (the tune backend's
                          resources per trial; unset = 1 GPU where the cluster has GPUs, its CPUs / workers)
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

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field

from pgolf.config import COMPRESSORS, MAX_TTT_RANK, QUANT_BITS_ALLOWED, ConfigError, RunConfig, config_from_dict, config_to_dict
from pgolf.configfiles import resolve_config
from pgolf.storage import FORMAT_AXES

PRESET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")
GRANULARITIES = ("kind", "layer", "tensor")
CONDITIONAL_DIMS = ("model.loop_len", "model.loop_start")


class SpaceError(ValueError):
    """A space file that cannot be used; the message names the key."""


@dataclass
class Caps:
    artifact_bytes: int = 16_000_000
    train_seconds: float = 600.0
    eval_seconds: float = 600.0


@dataclass
class Dimension:
    key: str = ""  # "section.name" of a RunConfig field
    choices: list | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False

    @property
    def is_int(self) -> bool:
        return self.choices is None and isinstance(self.low, int) and isinstance(self.high, int)

    def values_bound(self) -> tuple:
        """(smallest, largest) value this dimension can produce."""
        if self.choices is not None:
            return min(self.choices), max(self.choices)
        return self.low, self.high


@dataclass
class AllocationSpace:
    bits: list = field(default_factory=lambda: [4, 5, 6, 8])  # integer widths the allocation may give a unit
    embedding_bits: list = field(default_factory=lambda: [6, 8, 16])  # widths for the embedding / head
    clip: list = field(default_factory=lambda: [0.0, 8.0, 12.85, 20.0])  # clip multipliers tried (0 = percentile)
    granularity: str = "layer"  # one choice per: tensor kind | kind per layer | tensor
    eval_repeats: list = field(default_factory=list)  # eval unroll counts tried ([] = training's)
    eval_stride: list = field(default_factory=lambda: [0])  # sliding-window strides tried (0 = chunks)
    compressors: list = field(default_factory=lambda: ["zstd"])
    level: int = 22
    calib_tokens: int = 32_768  # held-out training tokens on which damage is measured
    sensitivity: str = "forward"  # how: forward (one pass per unit) | fisher (one backward pass); search/allocation/sensitivity.py
    confirm_top: int = 2  # allocations confirmed on the full validation split
    # Matrix formats beyond RTN a unit may take: one key per axis of pgolf/storage.py's FORMAT_AXES (its space_key,
    # its default alone by default); every combination is an option.
    quantizers: list = field(default_factory=lambda: ["rtn"])  # names of pgolf/storage.py's QUANTIZERS
    awq: list = field(default_factory=lambda: [0.0])  # AWQ-lite exponents (0 = off)
    outliers: list = field(default_factory=lambda: [0.0])  # fractions of weights kept exact in fp16
    ranks: list = field(default_factory=lambda: [0])  # ranks of the low-rank error correction (0 = none)
    rank_bits: int = 16  # the correction's factors: 16 = fp16, 8 = int8
    # Score-first test-time training (pgolf/ttt.py) the allocation may turn on; [] = none. The other eval.ttt_*
    # keys (mode, targets, optimizer, lr, steps, reset) come from the base config.
    ttt_chunk: list = field(default_factory=list)  # chunk lengths tried
    ttt_rank: list = field(default_factory=lambda: [8])  # LoRA ranks tried


PRUNERS = ("median", "successive_halving", "hyperband", "none")
SENSITIVITY_METHODS = ("forward", "fisher")


@dataclass
class SearchPlan:
    """How a study spends its budget (the space's [search] table; search/budget/fidelity.py acts on it)."""
    # Multi-fidelity over training time, fed by the validation reports (one each base.train.val_every_seconds).
    pruner: str = "median"  # median | successive_halving | hyperband | none
    min_seconds: float = 0.0  # training seconds before the first rung (0 = the first report)
    reduction_factor: int = 3  # successive halving / hyperband: one in this many goes on at each rung
    # Noise-aware ranking: once sampling ends, the best `rerun_top` configurations train again with
    # `rerun_seeds` new seeds each; status and export rank configurations by their mean over seeds.
    rerun_top: int = 0
    rerun_seeds: int = 2
    # A proxy budget: every trial trains `proxy_steps` steps (fixed compute, no wallclock cap: it ranks the same
    # on any machine) or `proxy_seconds`, its warmdown scaled to the same fraction of training, and its bpb at
    # the target budget (`target_steps`, or `target_seconds`, default the training cap) is extrapolated
    # (search/budget/extrapolate.py) with the gap's growth exponent `gap_growth`. 0 = trials train at the target.
    proxy_steps: int = 0
    target_steps: int = 0
    proxy_seconds: float = 0.0
    target_seconds: float = 0.0
    gap_growth: float = 0.0


@dataclass
class Space:
    name: str
    description: str
    caps: Caps
    base: RunConfig
    dims: list
    baseline: dict
    allocation: AllocationSpace
    data: str = ""
    device: str = "auto"
    gpus_per_trial: float | None = None
    cpus_per_trial: float | None = None
    source: str = ""
    trials: int = 10
    timeout: float | None = None
    search: SearchPlan = field(default_factory=SearchPlan)
    script: object = None  # a script space's [script] table (space/script.py's ScriptSpec); None: an engine space

    def dim(self, key: str) -> Dimension | None:
        return next((d for d in self.dims if d.key == key), None)


def _fields(cls) -> dict:
    return {f.name: f for f in dataclasses.fields(cls)}


def _typed(where: str, value, kind):
    checks = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
              float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              str: lambda v: isinstance(v, str), bool: lambda v: isinstance(v, bool), list: lambda v: isinstance(v, list)}
    if not checks[kind](value):
        name = kind if isinstance(kind, str) else kind.__name__
        raise SpaceError(f"{where} must be {'an ' + name if name == 'int' else 'a ' + name if name != 'list' else 'a list'}, got {value!r}")
    return float(value) if kind is float else value


def _kind(annotation):
    """The checked kind of a dataclass field: its type without Optional; numbers keep int vs float."""
    text = str(annotation)
    if text.startswith("list") or annotation is list:
        return list
    if "float" in text and "None" in text:
        return "number"
    return {"int": int, "float": float, "str": str, "bool": bool}.get(text, annotation)


def _table(where: str, value) -> dict:
    if not isinstance(value, dict):
        raise SpaceError(f"{where} must be a table")
    return value


def _dataclass_from(where: str, cls, values: dict):
    known = _fields(cls)
    kwargs = {}
    for key, value in _table(where, values).items():
        if key not in known:
            raise SpaceError(f"unknown key {where}.{key}")
        kwargs[key] = _typed(f"{where}.{key}", value, _kind(known[key].type))
    return cls(**kwargs)


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
    if dim.low is None or dim.high is None:
        raise SpaceError(f"{where}: needs choices = [...] or low and high")
    if dim.low > dim.high:
        raise SpaceError(f"{where}: empty range, low {dim.low} > high {dim.high}")
    if dim.log and dim.low <= 0:
        raise SpaceError(f"{where}: a log range needs low > 0")
    if dim.step is not None and (dim.step <= 0 or dim.log):
        raise SpaceError(f"{where}: step must be positive and cannot be combined with log")
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
    _check_formats(alloc)
    if any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in alloc.ttt_chunk):
        raise SpaceError(f"allocation.ttt_chunk must list positive chunk lengths in tokens, got {alloc.ttt_chunk}")
    if not alloc.ttt_rank or any(not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= MAX_TTT_RANK for r in alloc.ttt_rank):
        raise SpaceError(f"allocation.ttt_rank must list LoRA ranks in [1, {MAX_TTT_RANK}], got {alloc.ttt_rank}")
    if alloc.sensitivity not in SENSITIVITY_METHODS:
        raise SpaceError(f"allocation.sensitivity must be one of {', '.join(SENSITIVITY_METHODS)}, got {alloc.sensitivity!r}")
    if alloc.calib_tokens < 1024 or alloc.confirm_top < 1:
        raise SpaceError("allocation.calib_tokens must be at least 1024 and allocation.confirm_top at least 1")
    return alloc


def search_plan_from_dict(values: dict) -> SearchPlan:
    plan = _dataclass_from("search", SearchPlan, values)
    if plan.pruner not in PRUNERS:
        raise SpaceError(f"search.pruner must be one of {', '.join(PRUNERS)}, got {plan.pruner!r}")
    if plan.min_seconds < 0 or plan.reduction_factor < 2:
        raise SpaceError(f"search.min_seconds must be >= 0 and search.reduction_factor >= 2, got {plan.min_seconds} and {plan.reduction_factor}")
    if plan.rerun_top < 0 or plan.rerun_seeds < 1:
        raise SpaceError(f"search.rerun_top must be >= 0 and search.rerun_seeds >= 1, got {plan.rerun_top} and {plan.rerun_seeds}")
    if plan.proxy_steps and plan.proxy_seconds:
        raise SpaceError("search: a proxy budget is proxy_steps or proxy_seconds, not both")
    if plan.proxy_steps < 0 or plan.proxy_seconds < 0 or (plan.proxy_steps and plan.target_steps <= plan.proxy_steps):
        raise SpaceError(f"search: proxy_steps must be positive and below target_steps, got {plan.proxy_steps} and {plan.target_steps}")
    if plan.proxy_seconds and plan.target_seconds and plan.target_seconds <= plan.proxy_seconds:
        raise SpaceError(f"search: proxy_seconds must be below target_seconds, got {plan.proxy_seconds} and {plan.target_seconds}")
    return plan


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
    run = _table("run", data.get("run", {}))
    for key in run:
        if key not in ("base", "data", "device", "gpus_per_trial", "cpus_per_trial"):
            raise SpaceError(f"unknown key run.{key}")
    resources = {key: _typed(f"run.{key}", run[key], float) for key in ("gpus_per_trial", "cpus_per_trial") if key in run}
    if resources.get("gpus_per_trial", 0) < 0 or resources.get("cpus_per_trial", 1) <= 0:
        raise SpaceError(f"run.gpus_per_trial must be >= 0 and run.cpus_per_trial > 0, got {resources}")
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
                  data=_typed("run.data", run.get("data", ""), str), device=device, source=source, **resources,
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
    if not space.dim("eval.seq_len") and not space.dim("train.seq_len"):
        longer = [c for c in space.allocation.ttt_chunk if c > base.eval_seq_len()]
        if longer:
            raise SpaceError(f"allocation.ttt_chunk {longer} longer than the eval sequence length {base.eval_seq_len()}: "
                             "a chunk is scored by windows of that length")
    return space


def _check_baseline(space: Space) -> None:
    for key, value in space.baseline.items():
        dim = space.dim(key)
        if dim is None:
            raise SpaceError(f"baseline.{key}: not a dimension of the space")
        if dim.choices is not None and value not in dim.choices:
            raise SpaceError(f"baseline.{key} = {value!r} is not one of its choices {dim.choices}")
        if dim.choices is None and not (dim.low <= value <= dim.high):
            raise SpaceError(f"baseline.{key} = {value!r} is outside [{dim.low}, {dim.high}]")


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
