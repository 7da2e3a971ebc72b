"""The reader registry of tasks/ingest/readers: every format the README lists (txt, md, jsonl, csv,
parquet, each also as .gz/.bz2/.xz/.zst) is found by its file name and read, an unknown name is
read as text after the binary sniff (so a binary file gets the same `binary` reject as before the
registry), and a new format is one `register` call.

Inputs are real files in tmp_path; expected documents, offsets and reasons are written by hand.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from tasks.ingest import Doc, ReadOptions, Reject, read_item
from tasks.ingest.locations import enumerate_sources
from tasks.ingest.readers import registry
from tasks.ingest.readers.registry import format_of

TEXT = "alpha beta, a document\n"


def _parquet_bytes() -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": [TEXT]}), buf)
    return buf.getvalue()


# name -> (file content, expected format, the one document's offset, its bytes)
FILES = {
    "doc.txt": (TEXT.encode(), "text", 0, TEXT.encode()),
    "doc.md": (TEXT.encode(), "text", 0, TEXT.encode()),
    "doc.jsonl": (b'{"text": "alpha beta, a document\\n"}\n', "jsonl", 1, TEXT.encode()),
    "doc.ndjson": (b'{"text": "alpha beta, a document\\n"}\n', "jsonl", 1, TEXT.encode()),
    "doc.csv": (b'id,text\n7,"alpha beta, a document\n"\n', "csv", 2, TEXT.encode()),
    "doc.tsv": (b'id\ttext\n7\t"alpha beta, a document\n"\n', "tsv", 2, TEXT.encode()),
    "doc.parquet": (_parquet_bytes(), "parquet", 1, TEXT.encode()),
    "doc.pq": (_parquet_bytes(), "parquet", 1, TEXT.encode()),
}
COMPRESSORS = {
    "": (None, lambda b: b),
    ".gz": ("gzip", gzip.compress),
    ".bz2": ("bz2", bz2.compress),
    ".xz": ("xz", lzma.compress),
    ".zst": ("zstd", lambda b: zstandard.ZstdCompressor().compress(b)),
}


def read_all(path: Path, tmp_path: Path) -> list[Doc | Reject]:
    """Every event of the one item that `path` enumerates to, read with the default options."""
    items, _ = enumerate_sources([str(path)])
    assert len(items) == 1, items
    return list(read_item(items[0], ReadOptions(spool_dir=str(tmp_path / "spool"))))


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
@pytest.mark.parametrize("name", list(FILES))
def test_every_listed_format_and_compression_is_found_by_name_and_read(tmp_path, name, suffix):
    content, fmt, offset, text = FILES[name]
    compression, compress = COMPRESSORS[suffix]
    path = tmp_path / f"{name}{suffix}"
    path.write_bytes(compress(content))

    assert format_of(path.name) == (fmt, compression)
    assert format_of(path.name.upper()) == (fmt, compression)  # names are matched case-blind
    assert read_all(path, tmp_path) == [Doc(str(path), offset, text, "utf-8")]


def test_every_format_of_the_readme_is_registered():
    assert {"text", "jsonl", "csv", "tsv", "parquet", "python-docs"} <= set(registry.formats())
    assert registry.offset_units()["csv"].startswith("line number (1-based)")


def test_an_unknown_format_is_sniffed_as_text_and_a_binary_one_gets_the_reason_it_always_had(tmp_path):
    docx = tmp_path / "slides.docx"  # a .docx is a ZIP archive; no reader claims the name
    docx.write_bytes(b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)))
    log = tmp_path / "server.log"
    log.write_bytes(b"plain words in an unknown kind of file\n")

    assert format_of("slides.docx") == ("text", None)
    assert read_all(docx, tmp_path) == [
        Reject(str(docx), 0, "binary", "ZIP archive (also .docx, .xlsx, .epub, .jar) signature at the start")
    ]
    assert read_all(log, tmp_path) == [Doc(str(log), 0, b"plain words in an unknown kind of file\n", "utf-8")]
    # a format name that no reader has (a hand-made item) is read as text too
    item = {
        "kind": "file",
        "source": "s",
        "path": str(log),
        "size": 39,
        "format": "nonesuch",
        "compression": None,
    }
    assert [ev.data for ev in read_item(item, ReadOptions())] == [b"plain words in an unknown kind of file\n"]


def test_a_new_format_is_one_register_call(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_FORMATS", dict(registry._FORMATS))  # undone after the test

    def read_shout(item, opts, on_bytes):
        yield Doc(item["path"], 0, Path(item["path"]).read_bytes().upper(), "utf-8")

    registry.register("shout", read_shout, extensions=(".shout",), offset_unit="always 0")
    path = tmp_path / "a.shout"
    path.write_bytes(b"quiet words")

    assert format_of("a.shout.gz") == ("shout", "gzip")
    assert read_all(path, tmp_path) == [Doc(str(path), 0, b"QUIET WORDS", "utf-8")]
    assert registry.offset_units()["shout"] == "always 0"


def test_registering_a_taken_name_or_extension_says_which_format_has_it():
    with pytest.raises(ValueError, match=r"extension '\.csv' is already read as 'csv'"):
        registry.register("table", lambda *a: iter(()), extensions=(".csv",))
    with pytest.raises(ValueError, match=r"format 'jsonl' is registered twice"):
        registry.register("jsonl", lambda *a: iter(()))
    with pytest.raises(ValueError, match=r"must be lower case with a dot"):
        registry.register("yaml", lambda *a: iter(()), extensions=("yaml",))
    assert "table" not in registry.formats() and "yaml" not in registry.formats()
