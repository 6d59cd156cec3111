"""Reference machines: a space may state its training cap in another machine's seconds (caps.train_reference),
and these are the published step times that tie that machine to the one a study runs on.

A reference machine is a list of reference shapes, each a pgolf configuration (a shipped config plus settings)
with the milliseconds per step that machine took to train it and where that figure is published. The built-in
machine is the challenge's 8xH100 (REFERENCE_MACHINES); a TOML file defines another one, e.g. a table measured
on some machine by bench/step_budget.py:

    name = "cpu-2ranks"
    description = "this machine, 2 ranks under torchrun"
    [[shapes]]
    label = "tiny"
    config = "tiny"                           # a shipped config, or a TOML path relative to this file
    set = { "model.num_layers" = 2 }          # settings on top ("section.key" = value)
    step_ms = 812.5
    source = "bench/step_budget.py, 2 ranks of this machine, median of 6 steps"
search/budget/stepbudget.py turns a machine's figures and a short timed run of its shapes here into a step budget.
"""

import os
import tomllib
from dataclasses import dataclass, field

from pgolf.config import ConfigError, RunConfig, config_from_dict, config_to_dict
from pgolf.configfiles import resolve_config
from space.core import SpaceError

RECORDS = "openai/parameter-golf records/track_10min_16mb"


@dataclass(frozen=True)
class ReferenceShape:
    label: str
    step_ms: float  # milliseconds per training step on the reference machine (all its ranks together)
    source: str  # where the figure is published
    config: str = "baseline"  # a shipped config name or a TOML path
    settings: dict = field(default_factory=dict)  # "section.key" -> value on top of the config

    def run_config(self) -> RunConfig:
        """The shape as a pgolf config (ConfigError if its config or settings are invalid)."""
        data = config_to_dict(resolve_config(self.config))
        for key, value in self.settings.items():
            section, _, name = key.partition(".")
            if section not in data or name not in data[section]:
                raise ConfigError(f"{key!r} is not a config key")
            data[section][name] = value
        return config_from_dict(data)

    def record(self) -> dict:
        return {"label": self.label, "step_ms": self.step_ms, "source": self.source}


@dataclass(frozen=True)
class ReferenceMachine:
    name: str
    description: str
    shapes: tuple


# The challenge's machine. Each figure is the step_avg of a record's log at its wallclock stop, on 8xH100 SXM under
# torchrun --nproc_per_node=8 (step times include all eight ranks' passes and the gradient all-reduce).
REFERENCE_MACHINES = {
    "8xH100": ReferenceMachine("8xH100", "the challenge's machine: 8 H100 SXM GPUs, torchrun --nproc_per_node=8", (
        ReferenceShape("official baseline (9x512, MLP 2x, sp1024, seq 1024)", 43.54,
                       f"{RECORDS}/2026-03-17_NaiveBaseline/train.log: 13,780 steps in 600 s, 524,288 tokens/step"),
        ReferenceShape("8x512, MLP 3x, sp4096, seq 4096, int6 fake-quant throughout", 66.80,
                       f"{RECORDS}/2026-03-19_Vocab4096_MLP3x_SlidingWindow/train.log: 8,984 steps in 600.1 s, 524,288 "
                       "tokens/step (its optimizer NorMuon, pgolf's Muon)",
                       settings={"model.vocab_size": 4096, "model.num_layers": 8, "model.mlp_mult": 3.0, "train.seq_len": 4096,
                                 "train.qat_fraction": 1.0, "train.qat_bits": 6}),
    )),
}


def reference_machine(name_or_path: str, base_dir: str = "") -> ReferenceMachine:
    """A built-in machine by name, or one defined by a TOML table (a path relative to `base_dir`, the space file's
    folder). Anything that cannot give a speed ratio is one SpaceError line."""
    if name_or_path in REFERENCE_MACHINES:
        return REFERENCE_MACHINES[name_or_path]
    path = name_or_path if os.path.isabs(name_or_path) else os.path.join(base_dir, name_or_path)
    if not name_or_path.endswith(".toml") or not os.path.isfile(path):
        raise SpaceError(f"caps.train_reference {name_or_path!r} is neither a known reference machine "
                         f"({', '.join(REFERENCE_MACHINES)}) nor a reference table file (.toml)")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise SpaceError(f"caps.train_reference {path}: not a readable TOML table ({exc})") from None
    return machine_from_dict(data, os.path.dirname(path), path)


def machine_from_dict(data: dict, base_dir: str, where: str) -> ReferenceMachine:
    unknown = set(data) - {"name", "description", "shapes"}
    if unknown:
        raise SpaceError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: name, description, shapes)")
    shapes = data.get("shapes", [])
    if not isinstance(shapes, list) or not shapes:
        raise SpaceError(f"{where}: no [[shapes]] with a published step_ms: without one there is no way to measure the speed ratio")
    return ReferenceMachine(str(data.get("name", os.path.splitext(os.path.basename(where))[0])), str(data.get("description", "")),
                            tuple(_shape(i, s, base_dir, where) for i, s in enumerate(shapes)))


def _shape(index: int, data, base_dir: str, where: str) -> ReferenceShape:
    at = f"{where}: shapes[{index}]"
    if not isinstance(data, dict):
        raise SpaceError(f"{at} must be a table")
    unknown = set(data) - {"label", "config", "set", "step_ms", "source"}
    if unknown:
        raise SpaceError(f"{at}: unknown key {sorted(unknown)[0]!r} (known: label, config, set, step_ms, source)")
    step_ms = data.get("step_ms")
    if isinstance(step_ms, bool) or not isinstance(step_ms, (int, float)) or not step_ms > 0:
        raise SpaceError(f"{at}: step_ms must be a positive number (the machine's milliseconds per step), got {step_ms!r}")
    config = str(data.get("config", "baseline"))
    if config.endswith(".toml") and not os.path.isabs(config):
        config = os.path.join(base_dir, config)
    settings = data.get("set", {})
    if not isinstance(settings, dict):
        raise SpaceError(f"{at}: set must be a table of \"section.key\" = value")
    shape = ReferenceShape(str(data.get("label", f"shape {index}")), float(step_ms), str(data.get("source", where)), config, dict(settings))
    try:
        shape.run_config()
    except ConfigError as exc:
        raise SpaceError(f"{at}: {exc}") from None
    return shape
