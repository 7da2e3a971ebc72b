"""`--set key=value` for the pydantic stage configs: the adapter between pydantic models and the one
`--set` parser (lm/overrides.py), and validation whose errors name the key at fault."""

from __future__ import annotations

import functools
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from lm.errors import ConfigError
from lm.overrides import TOP, Setting, parse_sets

M = TypeVar("M", bound=BaseModel)


@functools.cache
def _adapter(annotation: Any) -> TypeAdapter:
    return TypeAdapter(annotation)


def _takes_text(annotation: Any, text: str) -> bool:
    """Does a field of this type take `text` as it is (a path, a string)? If not, it is read as JSON."""
    try:
        _adapter(annotation).validate_python(text)
        return True
    except ValidationError:
        return False


def model_settings(cls: type[BaseModel]) -> dict[str, Setting]:
    """The fields of a pydantic model as `--set` sees them."""
    return {
        name: Setting(field.annotation, functools.partial(_takes_text, field.annotation))
        for name, field in cls.model_fields.items()
    }


def describe_validation_error(e: ValidationError, prefix: str = "") -> str:
    parts = []
    for err in e.errors():
        key = prefix + ".".join(str(p) for p in err["loc"])
        parts.append(f"invalid value {err.get('input')!r} for '{key}': {err['msg']}")
    return "; ".join(parts)


def build(cls: type[M], values: dict[str, Any], prefix: str = "") -> M:
    """Validate `values` into `cls`, turning pydantic's error into one that names each key."""
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e, prefix)) from None


def apply_sets(config: M, items: list[str]) -> M:
    """A copy of `config` with `key=value` items applied (keys are the config's field names)."""
    changes = parse_sets(items, {TOP: model_settings(type(config))})[TOP]
    return build(type(config), config.model_dump() | changes)
