"""Script spaces: a space file whose trials run a user's records-style training script (search/script/).

Instead of [run] and [base.*] it has a [script] table:
    path            the script; relative to the space file's folder
    ranks           1 = `python SCRIPT`; N = `torchrun --standalone --nproc_per_node=N SCRIPT`
    interpreter     the Python that runs it (default: the one running pgolf)
    counted         further files counted as code (relative to the script's folder)
    artifact        glob of the compressed model file the script writes, relative to its working directory
    seed_var        the variable carrying a trial's seed (default SEED)
    wallclock_var   the variable carrying the training cap (default MAX_WALLCLOCK_SECONDS)
    code            "plain" (the files as they are) | "compressed" (their self-extracting form, pgolf/selfextract.py)
    final_tag       a regular expression naming the final score line's tag (default: search/script/logs.py's rule)
    report_every_seconds  > 0: a validation report counts for the pruner at the training second it was made,
                    in buckets of this many seconds (equal training time across trials); 0: by its order
    [script.env]    fixed variables (DATA_PATH, ...); a relative path there means the working directory
[dims.NAME] are environment variables (same forms as an engine space's dims); [caps], [search] and [baseline]
as for engine spaces. Trial 0 runs the baseline: [baseline]'s values, and the script's own default for
every other dimension whose default lies in the dimension's range.
Everything is checked here, before anything runs: a variable the script never reads, a value it cannot
take, a missing script, a bad final_tag, a compressed form that does not build.
"""

import dataclasses
import os
import shutil
from dataclasses import dataclass, field

from pgolf.config import RunConfig, TrainConfig
from search.script import ScriptError
from search.script.knobs import check_read, env_value, read_script
from search.script.logs import compile_final_tag
from space.core import (AllocationSpace, Caps, Dimension, Space, SpaceError, _check_baseline, _dataclass_from, _table, _typed,
                        search_plan_from_dict, suggest_value, check_range)

CODE_FORMS = ("plain", "compressed")


@dataclass
class ScriptSpec:
    path: str = ""
    ranks: int = 1
    interpreter: str = ""
    counted: list = field(default_factory=list)
    artifact: str = "final_model*"
    seed_var: str = "SEED"
    wallclock_var: str = "MAX_WALLCLOCK_SECONDS"
    code: str = "plain"
    final_tag: str = ""
    report_every_seconds: float = 0.0
    env: dict = field(default_factory=dict)  # fixed variables, as the environment strings the script gets

    def counted_paths(self) -> list[str]:
        folder = os.path.dirname(self.path)
        return [c if os.path.isabs(c) else os.path.join(folder, c) for c in self.counted]


def suggest_env(space: Space, trial) -> dict:
    """A trial's dimension values (as sampled: ints, floats, strings), in file order; `trial` is an Optuna
    Trial or space.sample.ParamSource."""
    return {dim.key: suggest_value(trial, dim) for dim in space.dims}


def env_strings(space: Space, values: dict) -> dict[str, str]:
    """Sampled values as the environment strings the script reads (types were checked when the space loaded)."""
    knobs = read_script(space.script.path)
    return {name: env_value(knobs.get(name), value, f"dims.{name}") for name, value in values.items()}


def _dimension(name: str, spec: dict, knobs) -> Dimension:
    where = f"dims.{name}"
    check_read(knobs, name, "dimension")
    dim = _dataclass_from(where, Dimension, spec)
    dim.key = name
    if dim.choices is not None:
        if not dim.choices or dim.low is not None or dim.high is not None:
            raise SpaceError(f"{where}: give a non-empty choices list, or low and high, not both")
        values = dim.choices
    else:
        check_range(where, dim)
        values = [dim.low, dim.high]
    for value in values:
        env_value(knobs.get(name), value, where)  # 1.5 for an int(...) read is refused here
    return dim


def _script_spec(table: dict, base_dir: str) -> ScriptSpec:
    known = {f.name for f in dataclasses.fields(ScriptSpec)}
    for key in table:
        if key not in known:
            raise SpaceError(f"unknown key script.{key} (known: {', '.join(sorted(known))})")
    values = {k: v for k, v in table.items() if k != "env"}
    spec = _dataclass_from("script", ScriptSpec, values)
    spec.env = dict(_table("script.env", table.get("env", {})))
    if not spec.path:
        raise SpaceError("script.path is required (the training script to run)")
    spec.path = os.path.normpath(os.path.join(base_dir, os.path.expanduser(spec.path)))
    if not os.path.isfile(spec.path):
        raise SpaceError(f"script.path: {spec.path} does not exist")
    for item in spec.counted_paths():
        if not os.path.isfile(item):
            raise SpaceError(f"script.counted: {item} does not exist")
    if spec.ranks < 1:
        raise SpaceError(f"script.ranks must be at least 1, got {spec.ranks}")
    if spec.code not in CODE_FORMS:
        raise SpaceError(f"script.code must be one of {', '.join(CODE_FORMS)}, got {spec.code!r}")
    if spec.report_every_seconds < 0:
        raise SpaceError(f"script.report_every_seconds must be >= 0, got {spec.report_every_seconds:g}")
    if spec.interpreter and not (os.path.isfile(os.path.expanduser(spec.interpreter)) or shutil.which(spec.interpreter)):
        raise SpaceError(f"script.interpreter: {spec.interpreter} does not exist")
    compile_final_tag(spec.final_tag or None)
    return spec


def _fixed_env(spec: ScriptSpec, knobs) -> dict[str, str]:
    env = {}
    for name, value in spec.env.items():
        knob = check_read(knobs, name, "fixed variable")
        text = env_value(knob, value, f"script.env.{name}")
        # A relative path means the working directory, as every --data flag does (a trial runs in its own folder).
        if isinstance(value, str) and value and not os.path.isabs(value) and (os.sep in value or os.path.exists(value)):
            text = os.path.abspath(value)
        env[name] = text
    return env


def _optional_var(knobs, name: str, given: bool, what: str) -> str:
    """The variable if the script reads it; '' when the default name is not read; refused when it was named."""
    if knobs.get(name) is not None:
        return name
    if given:
        check_read(knobs, name, what)
    return ""


def script_space_from_dict(data: dict, source: str) -> Space:
    known = {"name", "description", "trials", "timeout", "caps", "script", "dims", "baseline", "search"}
    for key in data:
        if key not in known:
            raise SpaceError(f"unknown key {key!r} in a script space (known: {', '.join(sorted(known))}; "
                             "[run] and [base.*] are for engine spaces)")
    caps = _dataclass_from("caps", Caps, data.get("caps", {}))
    if caps.artifact_bytes <= 0 or caps.train_seconds <= 0 or caps.eval_seconds <= 0:
        raise SpaceError("caps.artifact_bytes, caps.train_seconds and caps.eval_seconds must be positive")
    if caps.train_reference:  # a script is capped by its own wallclock variable: pgolf cannot give it a step budget
        raise SpaceError("caps.train_reference: a script space's training cap is the script's own wallclock, in this machine's "
                         "seconds (a step budget from a reference machine is for engine spaces)")
    table = _table("script", data["script"])
    spec = _script_spec(table, os.path.dirname(source) if source else "")
    try:
        knobs = read_script(spec.path)
        spec.env = _fixed_env(spec, knobs)
        spec.seed_var = _optional_var(knobs, spec.seed_var, "seed_var" in table, "script.seed_var")
        spec.wallclock_var = _optional_var(knobs, spec.wallclock_var, "wallclock_var" in table, "script.wallclock_var")
        dims = [_dimension(name, _table(f"dims.{name}", value), knobs) for name, value in _table("dims", data.get("dims", {})).items()]
        for name in (spec.seed_var, spec.wallclock_var):
            if name and any(d.key == name for d in dims):
                raise SpaceError(f"dims.{name}: pgolf sets this variable itself (the seed / the training cap), it is not a dimension")
        if spec.code == "compressed":
            from pgolf.selfextract import SelfExtractError, build

            try:
                build(spec.path, spec.counted_paths())
            except SelfExtractError as exc:
                raise SpaceError(f"script.code = \"compressed\": {exc}") from None
    except ScriptError as exc:
        raise SpaceError(str(exc)) from None
    plan = search_plan_from_dict(data.get("search", {}))
    if plan.proxy_steps or plan.proxy_seconds:
        raise SpaceError("search: a proxy budget (proxy_steps / proxy_seconds) is for engine spaces; a script trains at the cap")
    # The pruner's rungs (search/budget/fidelity.py) count reports of report_every_seconds each, as an engine
    # space's count base.train.val_every_seconds: the base config carries that one number here.
    base = RunConfig(train=TrainConfig(val_every_seconds=spec.report_every_seconds))
    baseline = dict(_table("baseline", data.get("baseline", {})))
    for dim in dims:
        default = knobs.get(dim.key).default_value()
        if dim.key not in baseline and default is not None and _within(dim, default):
            baseline[dim.key] = int(default) if dim.is_int else default
    space = Space(name=_typed("name", data.get("name", os.path.splitext(os.path.basename(source))[0] or "space"), str),
                  description=_typed("description", data.get("description", ""), str), caps=caps, base=base, dims=dims,
                  baseline=baseline, allocation=AllocationSpace(), source=source,
                  trials=_typed("trials", data.get("trials", 10), int),
                  timeout=_typed("timeout", data["timeout"], float) if "timeout" in data else None, search=plan, script=spec)
    if space.trials < 1 or (space.timeout is not None and space.timeout <= 0):
        raise SpaceError("trials must be at least 1 and timeout positive")
    _check_baseline(space)
    try:
        for name, value in space.baseline.items():
            env_value(knobs.get(name), value, f"baseline.{name}")
    except ScriptError as exc:
        raise SpaceError(str(exc)) from None
    return space


def _within(dim: Dimension, value) -> bool:
    if dim.choices is not None:
        return any(c == value and type(c) is type(value) for c in dim.choices)
    if isinstance(value, (bool, str)):
        return False
    if dim.is_int and not float(value).is_integer():
        return False
    return dim.low <= value <= dim.high
