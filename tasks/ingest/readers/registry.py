"""The registry of input formats: which reader reads an item, by format name and file extension.

A format module calls `register(name, read, extensions, offset_unit)` once at import; the list
of format modules is in `tasks/ingest/readers/__init__.py`. `format_of` names the format and
compression of a file from its name; `reader_for` picks the reader of an item. A name that no
format claims (`.log`, `.rst`, no extension) is read as text, after a binary sniff, so a binary
file under an unknown name is quarantined as `binary` with what it looks like.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tasks.ingest.decompress import COMPRESSIONS
from tasks.ingest.records import PYTHON_DOCS, Doc, OnBytes, ReadOptions, Reject, Skip

DEFAULT_FORMAT = "text"  # what a file whose name no format claims is read as

# Reads every document and reject of one item; raises only SourceUnavailable (transient).
ItemReader = Callable[[dict[str, Any], ReadOptions, OnBytes | None], Iterator[Doc | Reject | Skip]]


@dataclass(frozen=True, slots=True)
class Format:
    name: str
    read: ItemReader
    extensions: tuple[str, ...]
    offset_unit: str | None  # what a Doc's or Reject's `offset` counts (the manifest says it)
    columns: tuple[str, ...] = ()  # its own data columns (layout.EXTRA_COLUMNS), in Doc.columns


_FORMATS: dict[str, Format] = {}


def register(
    name: str,
    read: ItemReader,
    extensions: tuple[str, ...] = (),
    offset_unit: str | None = None,
    columns: tuple[str, ...] = (),
) -> None:
    """Make `read` the reader of format `name` and of files named `*<ext>` (before compression).

    `offset_unit` may be None for a format that shares another's unit (TSV shares CSV's).
    `columns` are the format's own data columns, named in layout.EXTRA_COLUMNS: the parts of a
    shard that reads such a format have them (null for the other formats' documents); a shard
    without one writes the base schema, so the digests of the other formats do not change.
    """
    if name in _FORMATS:
        raise ValueError(f"format {name!r} is registered twice; give the second one another name")
    for ext in extensions:
        if not ext.startswith(".") or ext != ext.lower():
            raise ValueError(f"format {name!r}: extension {ext!r} must be lower case with a dot, e.g. '.txt'")
        if owner := next((f.name for f in _FORMATS.values() if ext in f.extensions), None):
            raise ValueError(f"format {name!r}: extension {ext!r} is already read as {owner!r}")
    _FORMATS[name] = Format(name, read, tuple(extensions), offset_unit, tuple(columns))


def formats() -> list[str]:
    """The registered format names, in registration order."""
    return list(_FORMATS)


def offset_units() -> dict[str, str]:
    """What `offset` means for each format (the manifest carries this table)."""
    return {f.name: f.offset_unit for f in _FORMATS.values() if f.offset_unit is not None}


def format_of(name: str) -> tuple[str, str | None]:
    """(format, compression) from a file name: `a.jsonl.zst` -> ("jsonl", "zstd")."""
    name = name.lower()
    compression = None
    for ext, comp in COMPRESSIONS.items():
        if name.endswith(ext):
            compression, name = comp, name[: -len(ext)]
            break
    fmt = next((f.name for f in _FORMATS.values() if name.endswith(f.extensions)), DEFAULT_FORMAT)
    return fmt, compression


def columns_of(item: dict[str, Any]) -> tuple[str, ...]:
    """The extra data columns of an item's format (none for an unknown format or python-docs)."""
    fmt = _FORMATS.get(item.get("format") or "") if item.get("kind") != PYTHON_DOCS else None
    return fmt.columns if fmt else ()


def reader_for(item: dict[str, Any]) -> ItemReader:
    """The reader of a `file` or `url` item by its format, or of a `python-docs` item.

    An unregistered format name (only a hand-made item has one) is read as text, as a file
    with an unknown extension is.
    """
    name = PYTHON_DOCS if item["kind"] == PYTHON_DOCS else item["format"]
    return (_FORMATS.get(name) or _FORMATS[DEFAULT_FORMAT]).read
