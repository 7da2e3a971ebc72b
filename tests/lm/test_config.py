import dataclasses

import pytest

from lm.config import (
    PRESETS,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    flatten,
    from_dict,
    get_preset,
    to_dict,
)
from lm.errors import ConfigError


def test_presets_are_valid_and_named():
    assert {"tiny", "small", "gpt2-124m"} <= set(PRESETS)
    assert get_preset("small").model.shape == "6x384"
    gpt2 = get_preset("gpt2-124m").model
    assert (gpt2.n_layer, gpt2.d_model, gpt2.n_head, gpt2.max_seq_len) == (12, 768, 12, 1024)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match=r"unknown preset 'tinny'.*did you mean 'tiny'"):
        get_preset("tinny")


@pytest.mark.parametrize(
    ("cls", "kwargs", "key"),
    [
        (ModelConfig, {"n_layer": 0}, "n_layer"),
        (ModelConfig, {"d_model": 100, "n_head": 3}, "d_model"),
        (ModelConfig, {"n_kv_head": 3}, "n_kv_head"),
        (ModelConfig, {"mlp": "gelu"}, "mlp"),
        (ModelConfig, {"dropout": 1.0}, "dropout"),
        (TrainConfig, {"lr": -1e-3}, "lr"),
        (TrainConfig, {"lr": float("nan")}, "lr"),
        (TrainConfig, {"batch_size": 0}, "batch_size"),
        (TrainConfig, {"dtype": "float16"}, "dtype"),
        (TrainConfig, {"beta2": 1.0}, "beta2"),
    ],
)
def test_bad_values_raise_naming_the_key(cls, kwargs, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        cls(**kwargs)


def test_overrides_parse_by_field_type_and_reach_both_configs():
    p = get_preset("tiny")
    m, t = apply_overrides(
        p.model,
        p.train,
        [
            "max_steps=333",
            "model.n_layer=2",
            "lr=1e-3",
            "qk_norm=true",
            "train.dtype=float32",
            "checkpoint_every=1_000",
        ],
    )
    assert (t.max_steps, m.n_layer, t.lr, m.qk_norm, t.dtype, t.checkpoint_every) == (
        333,
        2,
        1e-3,
        True,
        "float32",
        1000,
    )
    assert p.train.max_steps != 333  # the preset itself is untouched


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("max_stesp=3", r"unknown setting 'max_stesp' \(did you mean 'max_steps'\?\)"),
        ("model.lr=3", r"unknown setting 'model.lr'"),
        ("n_layer=two", r"invalid value 'two' for 'n_layer': expected an integer"),
        ("n_layer=2.5", r"'n_layer': expected an integer"),
        ("compile=maybe", r"'compile': expected true or false"),
        ("mlp=gelu", r"'mlp': choose one of swiglu, relu2"),
        ("lr=0", r"'lr'"),
        ("max_steps", r"not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_key(item, match):
    p = get_preset("tiny")
    with pytest.raises(ConfigError, match=match):
        apply_overrides(p.model, p.train, [item])


def test_config_round_trips_through_dict_and_flattens_for_tracking():
    p = get_preset("small")
    m, t = from_dict(to_dict(p.model, p.train))
    assert (m, t) == (p.model, p.train)
    flat = flatten(p.model, p.train)
    assert flat["model.d_model"] == 384 and flat["train.lr"] == p.train.lr
    assert len(flat) == len(dataclasses.fields(ModelConfig)) + len(dataclasses.fields(TrainConfig))
    with pytest.raises(ConfigError, match=r"unknown model setting.*n_layers"):
        from_dict({"model": {"n_layers": 3}, "train": {}})


def test_llama_hidden_size_rule():
    assert ModelConfig(d_model=384).hidden_dim == 1024
    assert ModelConfig(d_model=768).hidden_dim == 2048
    assert ModelConfig(d_model=256, mlp="relu2").hidden_dim == 1024
    assert ModelConfig(d_model=256, ffn_hidden=300).hidden_dim == 300
