"""Readers of ingest's inputs, one module per format, and `read_item`, which picks one per item.

    text.py         .txt, .md and any other name: a file per document, or split at blank / `%` lines
    jsonl.py        .jsonl, .ndjson: a document per line
    delimited.py    .csv, .tsv: a document per record
    parquet.py      .parquet, .pq: a document per row
    python_docs.py  the built-in `python-docs` source: the standard library's docstrings
    html.py         .html, .htm, .xhtml: a page's main text, its title as a column
    warc.py         .warc, .wet, .arc: web archives, a document per HTML or text record

Each of these compressed as .gz, .bz2, .xz or .zst is read too (`tasks.ingest.decompress`).
Adding a format is adding a module that calls `registry.register(...)` and importing it below.

Memory stays bounded: files are read in chunks of `chunk_bytes`, compressed streams are
decompressed incrementally, and at most one document (capped at `max_doc_bytes`) is held.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# The formats: importing a module registers it.
from tasks.ingest.readers import delimited, html, jsonl, parquet, python_docs, text, warc  # noqa: F401
from tasks.ingest.readers.registry import (
    columns_of,
    format_of,
    formats,
    offset_units,
    reader_for,
    register,
)
from tasks.ingest.records import Doc, OnBytes, ReadOptions, Reject, Skip

__all__ = ["columns_of", "format_of", "formats", "offset_units", "read_item", "reader_for", "register"]


def read_item(
    item: dict[str, Any], opts: ReadOptions, on_bytes: OnBytes | None = None
) -> Iterator[Doc | Reject | Skip]:
    """Every document and reject of one item. Raises only SourceUnavailable (transient).

    Never raises for bad content: an `error` item (something the plan found but cannot read),
    a binary file or a broken record becomes a Reject with a reason code (records.REASONS).
    """
    if item["kind"] == "error":
        yield Reject(item["path"], 0, item["reason"], item["detail"])
        return
    yield from reader_for(item)(item, opts, on_bytes)
