import pytest

from pgolf.cli import apply_overrides
from pgolf.config import ConfigError, RunConfig, config_from_dict, load_config_file
from pgolf.quant import pattern_value
from pgolf.configfiles import config_to_toml, resolve_config


def test_shipped_configs_are_the_documented_shapes():
    baseline = resolve_config("baseline")
    assert (baseline.model.num_layers, baseline.model.model_dim, baseline.model.num_heads, baseline.model.num_kv_heads) == (9, 512, 8, 4)
    assert baseline.model.mlp_mult == 2.0 and baseline.model.vocab_size == 1024 and baseline.model.tie_embeddings
    assert baseline.quant.bits == {"*": 8}
    tiny = resolve_config("tiny")
    assert (tiny.model.num_layers, tiny.model.model_dim, tiny.train.seq_len, tiny.train.batch_tokens, tiny.train.iterations) == (4, 256, 256, 8192, 200)


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[model]\nnum_layerz = 3\n")
    with pytest.raises(ConfigError, match="unknown config key model.num_layerz"):
        load_config_file(path)


def test_unknown_section_and_bad_types_are_named():
    with pytest.raises(ConfigError, match=r"unknown config section \[optim\]"):
        config_from_dict({"optim": {}})
    with pytest.raises(ConfigError, match="train.iterations must be an integer"):
        config_from_dict({"train": {"iterations": "many"}})
    with pytest.raises(ConfigError, match="not divisible by model.num_kv_heads"):
        config_from_dict({"model": {"num_heads": 8, "num_kv_heads": 3}})
    with pytest.raises(ConfigError, match=r"quant.bits\['\*'\] = 9"):
        config_from_dict({"quant": {"bits": {"*": 9}}})
    with pytest.raises(ConfigError, match="exceeds model.num_layers"):
        config_from_dict({"model": {"num_layers": 4, "loop_start": 3, "loop_len": 2}})
    with pytest.raises(ConfigError, match="train.data_spans 8 must cut train.batch_tokens 8192 into spans of whole"):
        config_from_dict({"train": {"seq_len": 2048, "batch_tokens": 8192}})


def test_invalid_toml_is_reported(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config_file(path)


def test_toml_round_trip(tmp_path):
    config = apply_overrides(resolve_config("tiny"), ["quant.bits={'*' = 6, 'tok_emb.weight' = 8}", "model.loop_len=2",
                                                      "model.loop_start=1", "model.loop_repeats=2", "eval.repeats=3"])
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(config))
    assert load_config_file(path) == config
    assert config.resolved_eval().repeats == 3 and config.resolved_eval().seq_len == 256


def test_later_patterns_override_earlier_ones():
    bits = {"*": 6, "*.mlp.*": 5, "blocks.0.*": 8}
    assert pattern_value(bits, "blocks.3.mlp.fc.weight", 16) == 5
    assert pattern_value(bits, "blocks.0.mlp.fc.weight", 16) == 8
    assert pattern_value({}, "x", 16) == 16


def test_defaults_are_valid():
    assert config_from_dict({}) == RunConfig()
