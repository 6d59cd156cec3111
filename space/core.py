"""What both space loaders build and read with: the engine's (space/spec.py) and a script space's (space/script.py).

The space's types (Space, its Caps, Dimensions, AllocationSpace and SearchPlan), the checked readers of a TOML
table into them, the [search] and [baseline] checks, and how a trial suggests one dimension's value. Kept below
both loaders so that space/spec.py hands a script space to space/script.py without the two importing each other
(space/spec.py imports every name here again: `from space.spec import Space` keeps working).
"""

import dataclasses
from dataclasses import dataclass, field

from pgolf.config import RunConfig

CONDITIONAL_DIMS = ("model.loop_len", "model.loop_start")


class SpaceError(ValueError):
    """A space file that cannot be used; the message names the key."""


@dataclass
class Caps:
    artifact_bytes: int = 16_000_000
    train_seconds: float = 600.0
    eval_seconds: float = 600.0
    # The ranks the submission is evaluated on (the challenge's 8xH100: the challenge and frontier presets say 8):
    # evaluation splits the validation split over them, so an eval time measured on fewer ranks is scaled by
    # measured / eval_ranks before it meets eval_seconds. 0 = as measured (the trial's own ranks, no scaling).
    eval_ranks: int = 0
    # train_seconds on this reference machine, not here: a built-in name ("8xH100") or a reference table file
    # (search/budget/references.py); each trial then trains a step budget (search/budget/stepbudget.py). "" = here.
    train_reference: str = ""


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
    row_orders: list = field(default_factory=list)  # quant.row_order values a candidate is packed with; [] = the config's
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
    # Token n-gram tilt orders the allocation may turn on (pgolf/ngram.py; 0 or [] = none); threshold and boost come
    # from the base config.
    ngram_order: list = field(default_factory=list)
    # How the evaluation settings are chosen (search/allocation/): sequential = the stride first, then TTT on the
    # time left | joint = stride x TTT x tilt as one search under the eval cap (search/allocation/joint.py).
    eval_choice: str = "sequential"


PRUNERS = ("median", "successive_halving", "hyperband", "none")


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
    # A promotion ladder (search/budget/reruns.py): sampled trials train on run.ranks_per_trial ranks at the
    # step-equivalent budget, and the rerun_top best re-run on `promote_ranks` ranks, which rank the study. 0 = off.
    promote_ranks: int = 0
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
    ranks_per_trial: int = 1  # DDP ranks each trial trains with (space/spec.py: check_ranks_per_trial)
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


def search_plan_from_dict(values: dict) -> SearchPlan:
    plan = _dataclass_from("search", SearchPlan, values)
    if plan.pruner not in PRUNERS:
        raise SpaceError(f"search.pruner must be one of {', '.join(PRUNERS)}, got {plan.pruner!r}")
    if plan.min_seconds < 0 or plan.reduction_factor < 2:
        raise SpaceError(f"search.min_seconds must be >= 0 and search.reduction_factor >= 2, got {plan.min_seconds} and {plan.reduction_factor}")
    if plan.rerun_top < 0 or plan.rerun_seeds < 1:
        raise SpaceError(f"search.rerun_top must be >= 0 and search.rerun_seeds >= 1, got {plan.rerun_top} and {plan.rerun_seeds}")
    if plan.promote_ranks < 0 or (plan.promote_ranks and plan.rerun_top < 1):
        raise SpaceError(f"search.promote_ranks {plan.promote_ranks} needs search.rerun_top >= 1 (the configurations it promotes)")
    if plan.proxy_steps and plan.proxy_seconds:
        raise SpaceError("search: a proxy budget is proxy_steps or proxy_seconds, not both")
    if plan.proxy_steps < 0 or plan.proxy_seconds < 0 or (plan.proxy_steps and plan.target_steps <= plan.proxy_steps):
        raise SpaceError(f"search: proxy_steps must be positive and below target_steps, got {plan.proxy_steps} and {plan.target_steps}")
    if plan.proxy_seconds and plan.target_seconds and plan.target_seconds <= plan.proxy_seconds:
        raise SpaceError(f"search: proxy_seconds must be below target_seconds, got {plan.proxy_seconds} and {plan.target_seconds}")
    return plan


def _check_baseline(space: Space) -> None:
    for key, value in space.baseline.items():
        dim = space.dim(key)
        if dim is None:
            raise SpaceError(f"baseline.{key}: not a dimension of the space")
        if dim.choices is not None and value not in dim.choices:
            raise SpaceError(f"baseline.{key} = {value!r} is not one of its choices {dim.choices}")
        if dim.choices is None and not (dim.low <= value <= dim.high):
            raise SpaceError(f"baseline.{key} = {value!r} is outside [{dim.low}, {dim.high}]")


def check_range(where: str, dim: Dimension) -> None:
    """A low/high dimension: both bounds, numbers, a non-empty range, log only above 0, a positive step without log."""
    if dim.low is None or dim.high is None:
        raise SpaceError(f"{where}: needs choices = [...] or low and high")
    if any(isinstance(v, (str, bool)) for v in (dim.low, dim.high)):
        raise SpaceError(f"{where}: low and high must be numbers")
    if dim.low > dim.high:
        raise SpaceError(f"{where}: empty range, low {dim.low} > high {dim.high}")
    if dim.log and dim.low <= 0:
        raise SpaceError(f"{where}: a log range needs low > 0")
    if dim.step is not None and (dim.step <= 0 or dim.log):
        raise SpaceError(f"{where}: step must be positive and cannot be combined with log")


def suggest_value(trial, dim: Dimension, high=None):
    """One dimension's value from `trial` (an Optuna Trial or space.sample.ParamSource), at most `high` if given."""
    if dim.choices is not None:
        return trial.suggest_categorical(dim.key, dim.choices)
    top = dim.high if high is None else min(dim.high, high)
    low = min(dim.low, top)
    if dim.is_int:
        return trial.suggest_int(dim.key, int(low), int(top), step=int(dim.step or 1), log=dim.log)
    return trial.suggest_float(dim.key, float(low), float(top), step=dim.step, log=dim.log)
