"""LlamaConfig validation, presets and parameter counts."""
from __future__ import annotations

import math

import jax
import pytest

from pass_jax.config import (ConfigError, LlamaConfig, RopeScaling, from_dict, load_preset, preset_names,
                             to_dict)
from pass_jax.errors import PassJaxError
from pass_jax.model import param_shapes

BASE = dict(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)


def test_presets_load_and_count_parameters():
    assert {"tiny", "smollm2_135m", "llama1_7b", "llama2_7b"} <= set(preset_names())
    for name in preset_names():
        config = load_preset(name)
        assert isinstance(config, LlamaConfig)
        assert config.hidden_size % config.num_heads == 0 or config.head_dim is not None
    # well-known sizes
    assert load_preset("llama2_7b").num_params() == 6_738_415_616
    assert load_preset("llama1_7b").num_params() == 6_738_415_616
    smol = load_preset("smollm2_135m")
    assert smol.num_params() == 134_515_008
    assert (smol.num_heads, smol.num_kv_heads, smol.head_dim, smol.tie_embeddings) == (9, 3, 64, True)
    assert load_preset("llama2_7b").jnp_param_dtype == jax.numpy.bfloat16


@pytest.mark.parametrize("name", ["tiny", "smollm2_135m"])
def test_num_params_matches_model_shapes(name):
    config = load_preset(name)
    shapes = param_shapes(config)
    assert sum(math.prod(s.shape) for s in jax.tree.leaves(shapes)) == config.num_params()


def test_preset_by_path_and_suffix(tmp_path):
    assert load_preset("tiny.json") == load_preset("tiny")
    path = tmp_path / "mine.json"
    path.write_text('{"kind": "model", "description": "x", "vocab_size": 10, "hidden_size": 8, "num_layers": 1, '
                    '"num_heads": 2, "num_kv_heads": 1, "intermediate_size": 16}')
    assert load_preset(path).head_dim == 4


def test_unknown_preset():
    with pytest.raises(ConfigError, match=r"no config named 'nope'; available in .*'tiny'"):
        load_preset("nope")


def test_preset_that_is_not_a_model_config(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('{"kind": "train", "steps": 3}')
    with pytest.raises(ConfigError, match=r"is not a model config \(its 'kind' is 'train'\)"):
        load_preset(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_preset(path)


@pytest.mark.parametrize("changes, message", [
    ({"bogus": 1}, r"unknown config key\(s\) bogus in model config"),
    ({"num_heads": 5}, "num_heads=5 does not divide hidden_size=64"),
    ({"num_kv_heads": 3}, r"num_kv_heads=3 must divide num_heads=4 \(grouped-query attention\)"),
    ({"head_dim": 15}, "head_dim=15 must be even for RoPE"),
    ({"num_layers": 0}, "num_layers must be a positive integer, got 0"),
    ({"vocab_size": 12.5}, "vocab_size must be int, got 12.5"),
    ({"dtype": "int8"}, "dtype='int8' is not supported"),
    ({"param_dtype": "float64"}, "param_dtype='float64' is not supported"),
    ({"rms_eps": 0.0}, "rms_eps and rope_theta must be positive"),
    ({"rope_scaling": {"factor": 8.0, "foo": 1}}, r"unknown config key\(s\) rope_scaling\.foo in model config"),
])
def test_bad_configs(changes, message):
    with pytest.raises(ConfigError, match=message):
        from_dict({**BASE, **changes})


def test_missing_required_field():
    data = dict(BASE)
    del data["intermediate_size"]
    with pytest.raises(ConfigError, match="model config: .*intermediate_size"):
        from_dict(data)


def test_config_errors_are_user_errors():
    assert issubclass(ConfigError, PassJaxError) and issubclass(PassJaxError, ValueError)


def test_explicit_head_dim_allows_non_dividing_heads():
    config = from_dict({**BASE, "num_heads": 5, "num_kv_heads": 1, "head_dim": 16})
    assert config.head_dim == 16
    assert from_dict(BASE).head_dim == 16


def test_rope_scaling_and_round_trip():
    config = from_dict({**BASE, "rope_scaling": {"factor": 32.0, "original_max_position_embeddings": 8192}})
    assert config.rope_scaling == RopeScaling(factor=32.0)
    again = from_dict(to_dict(config))
    assert again == config and hash(again) == hash(config)  # hashable: configs are static jit arguments
    assert config.replace(num_layers=3).num_layers == 3 and config.num_layers == 2
    with pytest.raises(ConfigError, match="num_kv_heads=3 must divide"):
        config.replace(num_kv_heads=3)
    assert from_dict({**BASE, "name": "ignored"}) == from_dict(BASE)


def test_bundled_model_config_matches_preset(smollm2):
    assert smollm2.config == load_preset("smollm2_135m")


# Published parameter counts of the family presets (their model cards / safetensors index totals).
FAMILY_PRESETS = {"llama3_1_8b": 8_030_261_248, "llama3_2_1b": 1_235_814_400, "mistral_7b": 7_248_023_552,
                  "qwen2_5_7b": 7_615_616_512, "qwen3_8b": 8_190_735_360}


@pytest.mark.parametrize("name", sorted(FAMILY_PRESETS))
def test_family_presets_count_parameters_and_load_as_train_runs(name):
    from pass_jax.train.run_config import load_run_config

    config = load_preset(name)
    assert config.num_params() == FAMILY_PRESETS[name]
    assert sum(math.prod(s.shape) for s in jax.tree.leaves(param_shapes(config))) == config.num_params()
    assert (config.qkv_bias, config.qk_norm) == (name.startswith("qwen2"), name.startswith("qwen3"))
    assert (config.rope_scaling is not None) == name.startswith("llama3")
    run = load_run_config(f"{name}_wiki")
    assert run.model.preset == name


def test_family_options_are_validated():
    with pytest.raises(ConfigError, match="sliding_window must be a positive integer"):
        LlamaConfig(**BASE, sliding_window=0)
    with pytest.raises(ConfigError, match="family='gemma' is not supported"):
        LlamaConfig(**BASE, family="gemma")
    with pytest.raises(ConfigError, match="qkv_bias must be bool"):
        from_dict({**BASE, "qkv_bias": "yes"})
    plain = LlamaConfig(**BASE)
    assert LlamaConfig(**BASE, qkv_bias=True).num_params() == plain.num_params() + 2 * (64 + 2 * 32)
    assert LlamaConfig(**BASE, qk_norm=True).num_params() == plain.num_params() + 2 * 2 * 16
