"""`--set key=value` for the pydantic stage configs: parsed, validated, errors that name the key."""

from __future__ import annotations

import difflib
import json
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from lm.config import split_assignment
from lm.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def parse_raw(cls: type[BaseModel], key: str, text: str) -> Any:
    """A value as typed on the command line, for field `key` of `cls`.

    The text as it is when the field takes it (strings, numbers, true/false, paths), else the text
    read as JSON (lists, dicts: `--set 'pii_types=["email"]'`).
    """
    field = cls.model_fields.get(key)
    if field is None:
        return text
    adapter = TypeAdapter(field.annotation)
    try:
        adapter.validate_python(text)
        return text
    except ValidationError:
        try:
            return json.loads(text)
        except ValueError:
            return text


def describe_validation_error(e: ValidationError, prefix: str = "") -> str:
    parts = []
    for err in e.errors():
        key = prefix + ".".join(str(p) for p in err["loc"])
        parts.append(f"invalid value {err.get('input')!r} for '{key}': {err['msg']}")
    return "; ".join(parts)


def build(cls: type[M], values: dict[str, Any], prefix: str = "") -> M:
    """Validate `values` into `cls`, turning pydantic's error into one that names each key."""
    unknown = sorted(set(values) - set(cls.model_fields))
    if unknown:
        hint = difflib.get_close_matches(unknown[0], list(cls.model_fields), n=1)
        raise ConfigError(
            f"unknown setting '{prefix}{unknown[0]}'"
            + (f" (did you mean '{prefix}{hint[0]}'?)" if hint else "")
            + f"; known settings: {', '.join(prefix + k for k in cls.model_fields)}"
        )
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e, prefix)) from None


def apply_sets(config: M, items: list[str]) -> M:
    """A copy of `config` with `key=value` items applied (values parsed as JSON where they parse)."""
    values = config.model_dump()
    for item in items:
        key, raw = split_assignment(item)
        values[key] = parse_raw(type(config), key, raw)
    return build(type(config), values)
