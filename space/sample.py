"""Turning a trial's sampled values into a valid run config.

Dimensions are suggested in file order through Optuna's define-by-run API, so the same function serves
sampling (an Optuna trial), replaying stored params, and enqueued points. Structural rules:
- the shared segment (model.loop_len, model.loop_start) is sampled only when model.loop_repeats > 1,
  inside the sampled depth; without a loop_start dimension the segment sits in the middle;
- model.num_kv_heads becomes the largest divisor of model.num_heads not above the sampled value;
- model.model_dim is rounded to the nearest multiple of 2 x num_heads (an even head dim for RoPE);
- the record modules follow the sampled shape: parallel_last and xsa_last count at most num_layers blocks,
  the shared segment's deltas and boundary norm exist only with a segment, rotary_fraction is rounded to an
  even number (at least 2) of head dims, the attention gate's window to at most model_dim, and an
  embed_rank of model_dim or more means the full embedding; without QAT there is no rate term and no
  fake-quantized embedding (these rules live in pgolf.config.module_rules, which also rejects config files);
- training stops at the space's train-seconds cap.
"""

from pgolf.config import ConfigError, ModelConfig, RunConfig, TrainConfig, config_from_dict, config_to_dict, module_rules

from space.core import suggest_value as _suggest
from space.spec import CONDITIONAL_DIMS, Space, SpaceError


class ParamSource:
    """Adapts a plain dict of values to the suggest_* calls (for replay and checks)."""

    def __init__(self, params: dict):
        self.params = params

    def _get(self, name, default):
        return self.params.get(name, default)

    def suggest_categorical(self, name, choices):
        return self._get(name, choices[0])

    def suggest_int(self, name, low, high, step=1, log=False):
        return min(max(int(self._get(name, low)), low), high)

    def suggest_float(self, name, low, high, step=None, log=False):
        return min(max(float(self._get(name, low)), low), high)


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, max(min(n, limit), 1) + 1) if n % d == 0)


def _fit_modules(data: dict) -> None:
    """The record-module keys made valid for the sampled shape: every rule's repaired value (pgolf.config.module_rules,
    the same rules that reject a config file)."""
    for rule in module_rules(ModelConfig(**data["model"]), TrainConfig(**data["train"])):
        section, name = rule.key.split(".")
        data[section][name] = rule.repaired


def suggest_config(space: Space, trial) -> tuple[RunConfig, dict]:
    """(config, sampled values) for one trial; `trial` is an optuna Trial or a ParamSource."""
    values = {}
    for dim in space.dims:
        if dim.key not in CONDITIONAL_DIMS:
            values[dim.key] = _suggest(trial, dim)
    data = config_to_dict(space.base)
    for key, value in values.items():
        section, name = key.split(".")
        data[section][name] = value
    model = data["model"]
    if model["loop_repeats"] > 1:
        length_dim, start_dim = space.dim("model.loop_len"), space.dim("model.loop_start")
        length = _suggest(trial, length_dim, high=model["num_layers"]) if length_dim else max(1, min(model["loop_len"], model["num_layers"]))
        values["model.loop_len"] = model["loop_len"] = int(min(length, model["num_layers"]))
        free = model["num_layers"] - model["loop_len"]
        start = _suggest(trial, start_dim, high=free) if start_dim else free // 2
        values["model.loop_start"] = model["loop_start"] = int(min(start, free))
    else:
        model["loop_len"] = model["loop_start"] = 0
    model["num_kv_heads"] = _largest_divisor_at_most(model["num_heads"], model["num_kv_heads"])
    unit = 2 * model["num_heads"]
    model["model_dim"] = max(unit, int(round(model["model_dim"] / unit)) * unit)
    _fit_modules(data)
    train = data["train"]
    if train["max_wallclock_seconds"] <= 0 or train["max_wallclock_seconds"] > space.caps.train_seconds:
        train["max_wallclock_seconds"] = space.caps.train_seconds
    try:
        return config_from_dict(data), values
    except ConfigError as exc:
        raise SpaceError(f"sampled configuration is invalid: {exc}") from None


def check_dimension_values(space: Space) -> None:
    """Each dimension's choices and bounds, one at a time on the baseline point, make a valid config: a
    value the config refuses is named before any trial is spent on it."""
    for dim in space.dims:
        for value in dim.choices if dim.choices is not None else dim.values_bound():
            try:
                suggest_config(space, ParamSource({**space.baseline, dim.key: value}))
            except SpaceError as exc:
                raise SpaceError(f"{space.source or space.name}: dims.{dim.key!r} = {value!r}: {str(exc).removeprefix('sampled configuration is invalid: ')}") from None
