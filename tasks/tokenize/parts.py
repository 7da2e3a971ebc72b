"""Reading the clean stage's output: its listed Parquet parts, checked, and their documents."""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.common import StageError, read_manifest, verify_outputs
from tasks.tokenize.config import UPSTREAM

log = logging.getLogger("forja.tokenize")
ROW_BATCH = 256  # Parquet rows read at a time: bounded memory even for large documents


_PART_NAME = re.compile(r"part-[^/]*\.parquet")  # the clean stage's documents (not, say, its rejects)


def list_parts(in_dir: str | os.PathLike) -> list[Path]:
    """The Parquet parts of a finished clean output, checked against their sha256 in its manifest."""
    in_dir = Path(in_dir)
    manifest = read_manifest(in_dir, UPSTREAM)
    verify_outputs(in_dir, manifest)
    return sorted(in_dir / o["path"] for o in manifest["outputs"] if _PART_NAME.fullmatch(o["path"]))


def open_part(path: Path) -> pq.ParquetFile:
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise StageError(f"{path} is not a readable Parquet file ({e}); re-run the clean stage") from e
    names = set(pf.schema_arrow.names)
    for column in ("doc_id", "text"):
        if column not in names:
            raise StageError(
                f"{path} has no {column!r} column (columns: {sorted(names)}); "
                "tokenize reads the clean stage's output: re-run `forja clean`"
            )
    return pf


def iter_docs(path: Path, skipped: Counter, warn: bool = True) -> Iterator[tuple[str, str]]:
    """(doc_id, text) of each usable row; rows without text or doc_id are counted (and logged)."""
    pf = open_part(path)
    row = 0
    bad_rows: dict[str, list[int]] = {}
    for batch in pf.iter_batches(batch_size=ROW_BATCH, columns=["doc_id", "text"]):
        ids = batch.column("doc_id").to_pylist()
        texts = batch.column("text").to_pylist()
        for doc_id, text in zip(ids, texts, strict=True):
            reason = "empty_text" if not text else "missing_doc_id" if not doc_id else None
            if reason:
                skipped[reason] += 1
                bad_rows.setdefault(reason, []).append(row)
            else:
                yield str(doc_id), text
            row += 1
    for reason, rows in bad_rows.items() if warn else ():
        log.warning(
            "%s: skipped %d rows (%s), e.g. rows %s; the clean stage should not emit them",
            path.name,
            len(rows),
            reason,
            rows[:5],
        )


def corpus_bytes(parts: list[Path]) -> int:
    """UTF-8 bytes of text in the parts, from the n_bytes column when there is one (cheap)."""
    total = 0
    for path in parts:
        pf = open_part(path)
        column = "n_bytes" if "n_bytes" in pf.schema_arrow.names else "text"
        for batch in pf.iter_batches(batch_size=8192, columns=[column]):
            values = batch.column(0) if column == "n_bytes" else pc.binary_length(batch.column(0))
            total += int(pc.sum(values).as_py() or 0)
    return total
