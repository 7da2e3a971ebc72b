"""The one `--set` parser (lm/overrides.py), on plain field descriptions written here by hand."""

from pathlib import Path
from typing import Literal

import pytest

from lm.errors import ConfigError
from lm.overrides import TOP, Setting, parse_sets, resolve_key, split_assignment

GROUPS = {
    TOP: {"preset": Setting(str)},
    "tokenize": {"vocab_size": Setting(int), "symbols": Setting(list[str])},
    "model": {
        "vocab_size": Setting(int),
        "n_layer": Setting(int),
        "mlp": Setting(Literal["swiglu", "relu2"]),
    },
    "train": {"lr": Setting(float), "max_steps": Setting(int), "compile": Setting(bool)},
    "run": {"out": Setting(Path | None, accepts_text=lambda text: True)},
}


def test_bare_and_dotted_keys_reach_their_group_with_typed_values():
    changes = parse_sets(
        ["max_steps=1_000", "model.n_layer=2", "lr=3e-4", "compile=yes", "preset=small"], GROUPS
    )
    assert changes["train"] == {"max_steps": 1000, "lr": 0.0003, "compile": True}
    assert changes["model"] == {"n_layer": 2}
    assert changes[TOP] == {"preset": "small"}
    assert changes["tokenize"] == {} and changes["run"] == {}


def test_a_key_named_twice_keeps_the_last_value():
    assert parse_sets(["max_steps=3", "train.max_steps=4"], GROUPS)["train"] == {"max_steps": 4}


def test_an_ambiguous_bare_key_lists_its_owners():
    with pytest.raises(ConfigError) as e:
        parse_sets(["vocab_size=512"], GROUPS)
    assert str(e.value) == (
        "setting 'vocab_size' is ambiguous: tokenize.vocab_size, model.vocab_size; say which"
    )
    assert parse_sets(["model.vocab_size=512"], GROUPS)["model"] == {"vocab_size": 512}


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("max_stesp", "max_steps"),  # a typo of a bare key: the bare name
        ("model.lr", "train.lr"),  # the right field in the wrong group: the right group
        ("train.max_step", "train.max_steps"),  # a typo in the right group
        ("tokenize.n_layr", "model.n_layer"),  # a typo in the wrong group
    ],
)
def test_an_unknown_key_suggests_the_closest(key, hint):
    with pytest.raises(ConfigError, match=rf"^unknown setting '{key}' \(did you mean '{hint}'\?\); use"):
        resolve_key(key, GROUPS)


def test_an_unknown_key_without_a_close_name_lists_the_groups():
    with pytest.raises(ConfigError) as e:
        resolve_key("zzz", GROUPS)
    assert str(e.value) == (
        "unknown setting 'zzz'; use a field name, or group.field with a group among "
        "tokenize, model, train, run"
    )


def test_a_single_group_lists_its_known_settings():
    with pytest.raises(ConfigError) as e:
        resolve_key("lrr", {TOP: {"lr": Setting(float), "seed": Setting(int)}})
    assert str(e.value) == "unknown setting 'lrr' (did you mean 'lr'?); known settings: lr, seed"


def test_a_json_list_value_and_text_a_field_takes_as_it_is():
    changes = parse_sets(['tokenize.symbols=["<a>", "<b>"]', "run.out=/tmp/x"], GROUPS)
    assert changes["tokenize"] == {"symbols": ["<a>", "<b>"]}
    assert changes["run"] == {"out": "/tmp/x"}  # the receiving model makes it a Path
    assert parse_sets(["run.out=none"], GROUPS)["run"] == {"out": None}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("n_layer=two", "invalid value 'two' for 'n_layer': expected an integer"),
        ("model.n_layer=2.5", "invalid value '2.5' for 'model.n_layer': expected an integer"),
        ("lr=fast", "invalid value 'fast' for 'lr': expected a number"),
        ("compile=maybe", "invalid value 'maybe' for 'compile': expected true or false"),
        ("mlp=gelu", "invalid value 'gelu' for 'mlp': choose one of swiglu, relu2"),
        ("max_steps", "override 'max_steps' is not of the form key=value (e.g. --set max_steps=200)"),
    ],
)
def test_a_bad_value_names_the_key_as_typed(item, message):
    with pytest.raises(ConfigError) as e:
        parse_sets([item], GROUPS)
    assert str(e.value) == message


def test_a_mapping_of_typed_values_is_taken_as_it_is():
    changes = parse_sets({"train.lr": 0.5, "max_steps": "7"}, GROUPS)
    assert changes["train"] == {"lr": 0.5, "max_steps": 7}


def test_split_assignment_keeps_equals_signs_in_the_value():
    assert split_assignment(" prompt = a=b ") == ("prompt", "a=b")
