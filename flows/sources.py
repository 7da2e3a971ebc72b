"""`--source` as written: a bare PATH (today's meaning: every bare source goes into one dataset), or
`NAME=PATH[:WEIGHT]`, a named source of a weighted mixture.

A named source stays apart from the others through ingest, cleaning and tokenization, shares one
tokenizer with them, and is drawn in training as often as its weight says (lm/mixture.py). The same
NAME given twice adds a path to that source. A weight is any positive number (default 1); the
weights are shares of the whole, so `web=a:3 books=b:1` draws 75 % of the windows from `web`.

    NAME     letters, digits, '.', '_', '-' (it names metrics: val_bpb/NAME, tokens/NAME)
    PATH     what a bare source may be: a file, folder, glob or http(s) URL
    :WEIGHT  a trailing ':' and a number; `web=http://host:8080` is a URL with a port, not a
             weight, and an existing file whose name ends in ':word' is a path

Each source of a mixture is ingested and cleaned with the run's `ingest` and `clean` settings,
changed for that source by `source_settings` (NAME -> {"stage.field": value}, the keys `--set`
takes, for the ingest and clean stages), e.g.

    --set 'source_settings={"pl": {"ingest.encoding": "iso8859-2", "clean.languages": ["pl"]},
                            "web": {"ingest.split": "blank_line"}}'

(`ingest.encodings`, NAME -> codec, is the older spelling of a per-source `ingest.encoding`.)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from forja.settings import build
from lm.errors import ConfigError
from tasks.ingest import redact

M = TypeVar("M", bound=BaseModel)
SOURCE_STAGES = ("ingest", "clean")  # the stages a source runs on its own (tokenize shares a tokenizer)
NOT_PER_SOURCE = {"ingest.encodings"}  # a per-source setting itself

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HOST_PORT = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]*$")  # scheme://host: before a port


@dataclass(frozen=True)
class SourceSpec:
    """One named source of a mixture: its paths and its weight (before normalising)."""

    name: str
    paths: tuple[str, ...]
    weight: float


def _fail(spec: str, why: str) -> ConfigError:
    return ConfigError(
        f"--source {redact(spec)}: {why}; write NAME=PATH[:WEIGHT] with a positive weight "
        "(e.g. --source web=data/web:3 --source books=data/books:1), or a bare PATH"
    )


def split_spec(spec: str) -> tuple[str, str, float | None] | None:
    """(name, path, weight or None) of `NAME=PATH[:WEIGHT]`, or None for a bare PATH."""
    name, sep, rest = spec.partition("=")
    if not sep or not NAME.match(name):
        return None
    if not rest:
        raise _fail(spec, f"the source {name!r} has no path")
    path, colon, tail = rest.rpartition(":")
    if not colon or _HOST_PORT.match(path) or "/" in tail or "\\" in tail:
        return name, rest, None  # no weight (a path ending in ':...' that is not a number is a path)
    try:
        weight = float(tail)
    except ValueError:
        if "://" in rest or Path(rest).exists():  # a URL or a file whose name holds a ':'
            return name, rest, None
        raise _fail(spec, f"the weight {tail!r} is not a number") from None
    if not path:
        raise _fail(spec, f"the source {name!r} has no path")
    if not math.isfinite(weight) or weight <= 0:
        raise _fail(spec, f"the weight {tail!r} must be a positive number")
    return name, path, weight


def parse_sources(sources: list[str]) -> list[SourceSpec] | None:
    """The mixture the sources name, or None when every source is a bare PATH (one dataset)."""
    parsed = [(s, split_spec(s)) for s in sources]
    if all(p is None for _, p in parsed):
        return None
    bare = [s for s, p in parsed if p is None]
    if bare:
        shown = redact(bare[0])
        raise ConfigError(
            f"--source {shown}: a mixture names every source; write it as NAME=PATH[:WEIGHT], "
            f"e.g. --source main={shown}:1"
        )
    specs: dict[str, SourceSpec] = {}
    for s, (name, path, weight) in parsed:  # type: ignore[misc]
        if name in specs:  # the same name again: one more path of that source
            old = specs[name]
            if weight is not None and weight != old.weight:
                raise _fail(s, f"the source {name!r} was given the weight {old.weight:g} before")
            specs[name] = SourceSpec(name, (*old.paths, path), old.weight)
        else:
            specs[name] = SourceSpec(name, (path,), 1.0 if weight is None else weight)
    return list(specs.values())


def source_paths(sources: list[str]) -> list[str]:
    """Every path the sources name (bare or in a NAME=PATH[:WEIGHT])."""
    mixture = parse_sources(sources)
    return list(sources) if mixture is None else [p for s in mixture for p in s.paths]


def redact_source(spec: str) -> str:
    """`spec` with URL credentials redacted, in its path as well as in a bare URL."""
    try:
        parsed = split_spec(spec)
    except ConfigError:
        parsed = None
    if parsed is None:
        return redact(spec)
    name, path, _ = parsed
    return f"{name}={redact(path)}{spec[len(name) + 1 + len(path) :]}"  # the weight as written


def check_source_settings(
    settings: dict[str, dict[str, Any]], stage_models: dict[str, type[BaseModel]]
) -> None:
    """Every key of `source_settings` is `ingest.<field>` or `clean.<field>` (a ConfigError names
    the source and the key otherwise); the values are checked when applied (`source_config`)."""
    for name, changes in settings.items():
        for key in changes:
            stage, _, field = key.partition(".")
            if (
                stage not in SOURCE_STAGES
                or field not in stage_models[stage].model_fields
                or key in NOT_PER_SOURCE
            ):
                raise ConfigError(
                    f"source_settings.{name}: {key!r} is not a setting a source can have; use "
                    "ingest.<field> or clean.<field> (e.g. ingest.split, ingest.encoding, clean.languages)"
                )


def source_config(config: M, stage: str, name: str, settings: dict[str, dict[str, Any]]) -> M:
    """`config` (the run's settings of `stage`) with what `source_settings` gives source `name`."""
    prefix = f"{stage}."
    changes = {k[len(prefix) :]: v for k, v in settings.get(name, {}).items() if k.startswith(prefix)}
    if not changes:
        return config
    return build(type(config), config.model_dump() | changes, prefix=f"source_settings.{name}.{prefix}")


__all__ = [
    "SourceSpec",
    "check_source_settings",
    "parse_sources",
    "redact_source",
    "source_config",
    "source_paths",
    "split_spec",
]
