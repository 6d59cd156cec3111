"""Config files: shipped configs by name, and writing a RunConfig back out as TOML."""

import json
import os

from pgolf.config import ConfigError, RunConfig, config_to_dict, load_config_file

SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def shipped_configs() -> list[str]:
    return sorted(f[: -len(".toml")] for f in os.listdir(SHIPPED_DIR) if f.endswith(".toml"))


def resolve_config(name_or_path: str) -> RunConfig:
    """A config from a TOML path, or a shipped config by name (e.g. "baseline", "tiny")."""
    if os.path.exists(name_or_path):
        return load_config_file(name_or_path)
    if name_or_path in shipped_configs():
        return load_config_file(os.path.join(SHIPPED_DIR, f"{name_or_path}.toml"))
    raise ConfigError(f"no config file {name_or_path!r} and no shipped config of that name "
                      f"(shipped: {', '.join(shipped_configs())})")


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, float):
        return repr(value) if value == value and value not in (float("inf"), float("-inf")) else json.dumps(str(value))
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def config_to_toml(config: RunConfig) -> str:
    """TOML text that load_config_file reads back into an equal RunConfig."""
    lines = []
    for section, values in config_to_dict(config).items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)
