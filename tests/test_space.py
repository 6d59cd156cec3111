import os

import pytest

from space.sample import ParamSource, suggest_config
from space.spec import SpaceError, load_space, space_from_dict

MICRO = os.path.join(os.path.dirname(__file__), "spaces", "micro.toml")


def baseline_config(space):
    """The config of the space's [baseline] values, as the study's first trial samples it."""
    return suggest_config(space, ParamSource(space.baseline))[0]


def test_presets_load_and_their_baselines_are_the_documented_shapes():
    demo = baseline_config(load_space("demo"))
    assert (demo.model.num_layers, demo.model.model_dim, demo.model.mlp_mult, demo.model.vocab_size) == (4, 256, 2.0, 1024)
    assert demo.train.max_wallclock_seconds == load_space("demo").caps.train_seconds
    challenge = load_space("challenge")
    assert challenge.caps.artifact_bytes == 16_000_000 and challenge.caps.train_seconds == 600
    assert baseline_config(challenge).model.num_layers == 9


def test_structural_rules_keep_sampled_configs_valid():
    space = load_space("demo")
    config, values = suggest_config(space, ParamSource({"model.num_layers": 3, "model.model_dim": 192, "model.num_heads": 4,
                                                        "model.num_kv_heads": 3, "model.loop_repeats": 2, "model.loop_len": 2}))
    assert config.model.num_kv_heads == 2  # lowered to a divisor of 4
    assert config.model.loop_len == 2 and config.model.loop_start == 0  # centred in 3 blocks: one free block
    no_loop, values = suggest_config(space, ParamSource({"model.loop_repeats": 1, "model.loop_len": 2}))
    assert no_loop.model.loop_len == 0 and "model.loop_len" not in values


def base_dict():
    return {"name": "t", "caps": {"artifact_bytes": 100_000}, "run": {"base": "tiny"}}


@pytest.mark.parametrize("change, message", [
    ({"dims": {"model.widht": {"choices": [1]}}}, r"'model.widht' is not a config key"),
    ({"dims": {"model.num_layers": {"low": 5, "high": 2}}}, r"empty range"),
    ({"dims": {"model.model_dim": {"choices": []}}}, r"choices is empty"),
    ({"dims": {"train.seed": {"choices": [1, 2]}}}, r"seed is never a search dimension"),
    ({"allocation": {"bits": [9]}}, r"allocation.bits must list widths"),
    ({"allocation": {"granularity": "row"}}, r"granularity must be one of"),
    ({"allocation": {"sensitivity": "hessian"}}, r"allocation.sensitivity must be one of forward, fisher, got 'hessian'"),
    ({"caps": {"artifact_bytes": -1}}, r"must be positive"),
    ({"colour": "red"}, r"unknown key 'colour'"),
    ({"baseline": {"model.num_layers": 9}, "dims": {"model.num_layers": {"low": 1, "high": 4}}}, r"outside \[1, 4\]"),
])
def test_bad_space_files_name_the_problem(change, message):
    data = base_dict()
    data.update(change)
    with pytest.raises(SpaceError, match=message):
        space_from_dict(data)


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[caps\n")
    with pytest.raises(SpaceError, match=r"s.toml: not valid TOML"):
        load_space(str(path))


# One case per record-module rule (pgolf.config.module_rules), on the tiny shape (4 blocks x 256, 4 heads of 64, no
# shared segment, no QAT): values that break it.
BROKEN_MODULES = {
    "model.parallel_last": {"model.parallel_last": 5},
    "model.xsa_last": {"model.xsa_last": 9},
    "model.rotary_fraction": {"model.rotary_fraction": 0.3},  # 19.2 of 64 dims: an odd count
    "model.attn_gate_window": {"model.attn_gate": "sparse", "model.attn_gate_window": 300},
    "model.loop_lora_rank": {"model.loop_lora_rank": 4},
    "model.loop_boundary_norm": {"model.loop_boundary_norm": True},
    "model.embed_rank": {"model.embed_rank": 256},
    "train.qat_embed_bits": {"train.qat_embed_bits": 6},
    "train.rate_lambda": {"train.rate_lambda": 0.1},
}


def test_every_module_rule_rejects_a_config_file_and_repairs_a_sampled_trial(tmp_path):
    from pgolf.config import ConfigError, config_to_dict, load_config_file, module_rules
    from pgolf.configfiles import config_to_toml, resolve_config

    tiny = resolve_config("tiny")
    assert {rule.key for rule in module_rules(tiny.model, tiny.train)} == set(BROKEN_MODULES)  # a new rule gets a case here
    for key, values in BROKEN_MODULES.items():
        data = config_to_dict(tiny)
        for name, value in values.items():
            section, field = name.split(".")
            data[section][field] = value
        path = tmp_path / "broken.toml"
        path.write_text(config_to_toml(type(tiny)(**{s: type(getattr(tiny, s))(**v) for s, v in data.items()})))
        with pytest.raises(ConfigError, match=rf"^{tmp_path / 'broken.toml'}: {key}\b"):
            load_config_file(str(path))
        space = space_from_dict({"name": "t", "caps": {"artifact_bytes": 100_000}, "run": {"base": "tiny"},
                                 "dims": {name: {"choices": [value]} for name, value in values.items()}})
        config, _ = suggest_config(space, ParamSource({}))  # valid: config_from_dict accepted it
        section, field = key.split(".")
        assert getattr(getattr(config, section), field) != values[key], key
