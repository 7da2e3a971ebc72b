"""`--set key=value`: the one parser behind every command and flow that takes settings.

It works on plain descriptions of fields, grouped by name: `{"model": {"n_layer": Setting(int)}, ...}`
(the group `""` holds top-level fields, reached by their bare name only). A key is a bare field name
(`max_steps`), which must belong to exactly one group, or `group.field` (`train.lr`). Thin adapters
describe lm's dataclasses (`dataclass_settings`, here) and pydantic models (forja/settings.py); this
module knows neither pydantic nor forja, so lm stays importable on its own.

Values are parsed by the field's type: integers, numbers, true/false, one of a `Literal`'s choices,
`none` for an optional field. Any other type takes the text as it is when it accepts it (a path, a
string), else the text read as JSON (`--set 'pii_types=["email"]'`); the model that receives the
values validates them and names the key when one is wrong.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lm.errors import ConfigError

TOP = ""  # the group of top-level fields: reached by their bare name, never as `.name`


@dataclass(frozen=True)
class Setting:
    """One field that `--set` can reach: its type and, for types this module does not parse itself,
    whether the field takes a text as it is (else the text is read as JSON)."""

    type: Any
    accepts_text: Callable[[str], bool] | None = None


Groups = Mapping[str, Mapping[str, Setting]]


def split_assignment(item: str) -> tuple[str, str]:
    """`"key=value"` -> `("key", "value")`, or a ConfigError saying the form expected."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. --set max_steps=200)")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def _qualified(group: str, name: str) -> str:
    return name if group == TOP else f"{group}.{name}"


def _owners(name: str, groups: Groups) -> list[str]:
    return [g for g, fields in groups.items() if name in fields]


def _suggestion(key: str, groups: Groups) -> str | None:
    """The key the user most likely meant: the same field in its real group, else the closest name."""
    group, _, name = key.rpartition(".")
    owners = _owners(name, groups)
    if not owners:
        names = sorted({n for fields in groups.values() for n in fields})
        close = difflib.get_close_matches(name, names, n=1)
        if not close:
            return None
        name, owners = close[0], _owners(close[0], groups)
        if group in owners:  # a typo in the field name of the right group
            return _qualified(group, name)
    if not group and len(owners) == 1:
        return name  # a bare key stays bare when the name is unique
    return _qualified(owners[0], name)


def _unknown(key: str, groups: Groups) -> ConfigError:
    hint = _suggestion(key, groups)
    named = [g for g in groups if g != TOP]
    if len(named) <= 1:
        known = "; known settings: " + ", ".join(sorted({n for fields in groups.values() for n in fields}))
    else:
        known = "; use a field name, or group.field with a group among " + ", ".join(named)
    return ConfigError(f"unknown setting {key!r}" + (f" (did you mean {hint!r}?)" if hint else "") + known)


def resolve_key(key: str, groups: Groups) -> tuple[str, str]:
    """The (group, field) that `key` names; an unknown or ambiguous key is a ConfigError that says so."""
    group, _, name = key.rpartition(".")
    if group:
        if group == TOP or name not in groups.get(group, {}):
            raise _unknown(key, groups)
        return group, name
    owners = _owners(name, groups)
    if TOP in owners:  # a top-level field is never ambiguous: nothing else is reached without a dot
        return TOP, name
    if not owners:
        raise _unknown(key, groups)
    if len(owners) > 1:
        raise ConfigError(
            f"setting {key!r} is ambiguous: " + ", ".join(f"{o}.{name}" for o in owners) + "; say which"
        )
    return owners[0], name


def _bad(key: str, text: str, why: str) -> ConfigError:
    return ConfigError(f"invalid value {text!r} for '{key}': {why}")


def _parse_bool(key: str, text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise _bad(key, text, "expected true or false")


def _parse_int(key: str, text: str) -> int:
    try:
        value = float(text.replace("_", ""))  # 1_000 and 1e3 are integers too
    except ValueError:
        raise _bad(key, text, "expected an integer") from None
    if not value.is_integer():
        raise _bad(key, text, "expected an integer")
    return int(value)


def _parse_float(key: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _bad(key, text, "expected a number") from None


def _text_or_json(text: str, accepts_text: Callable[[str], bool] | None) -> Any:
    if accepts_text is not None and accepts_text(text):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text  # not JSON either: the receiving model's validation names the key


def parse_value(key: str, text: str, typ: Any, accepts_text: Callable[[str], bool] | None = None) -> Any:
    """Parse the text of `key=text` into the field's type, or raise a ConfigError naming the key."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if type(None) in typing.get_args(typ) and text.lower() in ("none", "null", ""):
            return None
        if len(args) == 1:
            return parse_value(key, text, args[0], accepts_text)
        return _text_or_json(text, accepts_text)
    if origin is Literal:
        allowed = typing.get_args(typ)
        if text not in allowed:
            raise _bad(key, text, f"choose one of {', '.join(map(str, allowed))}")
        return text
    parsers = {bool: _parse_bool, int: _parse_int, float: _parse_float, str: lambda _key, t: t}
    if typ in parsers:
        return parsers[typ](key, text)
    return _text_or_json(text, accepts_text)


def parse_sets(items: Iterable[str] | Mapping[str, Any], groups: Groups) -> dict[str, dict[str, Any]]:
    """`key=value` items (or a `{key: value}` mapping) -> `{group: {field: value}}`, values parsed.

    Values of a mapping that are not strings are taken as already typed.
    """
    pairs = list(items.items()) if isinstance(items, Mapping) else [split_assignment(i) for i in items]
    changes: dict[str, dict[str, Any]] = {g: {} for g in groups}
    for key, raw in pairs:
        group, name = resolve_key(key, groups)
        setting = groups[group][name]
        value = parse_value(key, raw, setting.type, setting.accepts_text) if isinstance(raw, str) else raw
        changes[group][name] = value
    return changes


def dataclass_settings(cls: type) -> dict[str, Setting]:
    """The fields of a dataclass as `--set` sees them."""
    hints = typing.get_type_hints(cls)
    return {f.name: Setting(hints[f.name]) for f in dataclasses.fields(cls)}


__all__ = [
    "TOP",
    "Groups",
    "Setting",
    "dataclass_settings",
    "parse_sets",
    "parse_value",
    "resolve_key",
    "split_assignment",
]
