"""What reading an input yields: a `Doc` to store or a `Reject` for the quarantine, and their terms.

`REASONS` is the quarantine's table of short reason codes (the manifest carries it): a reader that
needs a new reason adds it here. `ReadOptions` are the knobs every reader gets, taken from the
stage's IngestConfig by ingest_shard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PYTHON_DOCS = "python-docs"  # the built-in source: the docstrings of Python's standard library

# Short reason codes of the quarantine, with what each means (the manifest carries this table).
REASONS: dict[str, str] = {
    "binary": "binary data (NUL bytes, many control bytes, or a known binary signature)",
    "undecodable": "neither valid UTF-8 nor a detectable legacy encoding",
    "empty": "an empty or whitespace-only file, or one that holds no document",
    "unreadable": "the file or folder cannot be read (permissions, I/O error, not a regular file)",
    "symlink_loop": "a symbolic link that points back to itself or to a folder above it",
    "broken_symlink": "a symbolic link whose target does not exist",
    "truncated": "a compressed stream that ends early; documents before the break were kept",
    "corrupt": "a compressed stream or Parquet file that cannot be decoded at all",
    "bad_json": "a JSONL line that is not valid JSON",
    "not_object": "a JSONL line whose value is not a JSON object",
    "missing_field": "a JSONL object or CSV/Parquet row without the text field, or with a null",
    "not_string": "a text field or column that is not a string",
    "missing_column": "a CSV or Parquet file without the text column",
    "bad_csv_row": "a CSV record the csv module cannot parse",
    "too_large": "a document larger than max_doc_bytes",
    "syntax_error": "a standard-library file that Python cannot parse (python-docs)",
}

OnBytes = Callable[[int], None]  # told how many raw bytes were read, for progress lines


@dataclass(slots=True)
class Doc:
    """A document ready to store: `data` is valid UTF-8.

    `columns` holds the values of the format's own columns (layout.EXTRA_COLUMNS: an HTML page's
    title, a web-archive record's URL, date and id), when the format has any.
    """

    path: str
    offset: int
    data: bytes | bytearray
    encoding: str
    columns: dict[str, Any] | None = None


@dataclass(slots=True)
class Reject:
    """Something that goes to the quarantine instead of the data parts."""

    path: str
    offset: int
    reason: str
    detail: str


@dataclass(slots=True)
class Skip:
    """Something read and deliberately not kept (a web archive's request record): counted as
    `skipped_<kind>` in the run's counts, neither stored nor quarantined."""

    path: str
    offset: int
    kind: str


@dataclass(slots=True)
class ReadOptions:
    split: str = "file"
    text_field: str = "text"
    text_column: str = "text"
    max_doc_bytes: int = 256 << 20
    chunk_bytes: int = 1 << 20
    spool_dir: str | None = None  # where a remote or compressed Parquet file is copied to be read
    encoding: str | None = None  # the codec of text that is not UTF-8 (IngestConfig.encoding)
