"""Ingest: corpora (files, folders, globs, URLs, the built-in `python-docs`) -> a Parquet dataset.

    plan_ingest(sources, config)                  -> shards (lists of items, bounded bytes)
    ingest_shard(shard, out, config, run_id)      -> staged parts of one shard (map this)
    commit_ingest(out, shard_results, config)     -> drops duplicates, publishes, manifest last
    run_ingest(sources, out, config)              -> the three, in sequence

The package, by concern:

    config.py       IngestConfig: how to read the sources, how to lay out OUT
    locations.py    sources (files, folders, globs, URLs, python-docs) -> items
    urls.py         URL helpers: redact credentials, SourceUnavailable (transient, retried)
    readers/        item -> Doc / Reject, one module per format, and the registry that picks one
    decompress.py   gz / bz2 / xz / zst streams, read incrementally
    decode.py       binary sniff; UTF-8 and legacy-encoding detection
    charsets.py     which single-byte code page: candidates ranked by the decoded text's plausibility
    records.py      Doc, Reject, Skip, ReadOptions and the quarantine's reason codes
    plan.py         plan_ingest
    shard.py        ingest_shard and its Parquet part writer
    commit.py       commit_ingest: dedup in DuckDB (hash buckets of doc_ids), publish, manifest
    layout.py       OUT's names and schemas, run ids
    stage.py        the stage declared once (tasks/stage.py runs it); run_ingest

Output folder OUT (one ingest at a time per folder; a lock guards the commit):

    manifest.json                 current snapshot; `outputs` = every data part, `digest` over them
    data/part-SSSSSS-NNNNN.parquet  doc_id, source, path, offset, text, n_bytes, encoding, ingested_at
                                  (+ layout.EXTRA_COLUMNS where a part's documents have them:
                                  title, url, date, record_id, content_type, encoding_confidence)
    quarantine/part-SSSSSS-NNNNN.parquet  path, offset, reason, detail, source, ingested_at
    quarantine/rejected-<run>.parquet  the quarantine of a run that failed max_reject_ratio
    snapshots/SSSSSS.json         a copy of every manifest written (history)

The dataset only grows: a run adds the documents whose doc_id (sha256 of the UTF-8 text) it has
not stored yet, and the quarantine rows whose (source, path, offset, reason) are new. A run that
adds nothing writes nothing, so manifest.json stays byte-identical and a downstream cache keyed on
its digest stays valid. The digest covers the data parts' sha256 (and the config of the run that
wrote them), never a timestamp.

Accounting (stated in the manifest and tested): every input item - a candidate document, or a
file or stretch of a file that could not be split into documents - ends up exactly once as
accepted, a duplicate (a repeat of a text met earlier in the same run), already known (the run's
first occurrence of a text an earlier run stored), or quarantined:
`items == accepted + duplicates + already_known + quarantined`.

Crash safety: shards write under OUT/.staging/<run_id>/; the commit moves parts to final names
that no manifest lists yet and writes the manifest last (atomic rename). A crash anywhere leaves
the previous manifest and every part it lists untouched; the next successful commit removes the
leftovers (staging folders, .tmp-* files, parts no manifest lists).

Offsets: a 0-based byte offset in the (decompressed) file for text, a 1-based line number for
JSONL and CSV (the line a record starts on), a 1-based row number for Parquet, the 1-based source
line of the docstring for `python-docs`, the record's byte offset in the decompressed archive for
WARC/WET/ARC (the manifest's `offset_units`). Records read and not kept on purpose (a web
archive's request, metadata and warcinfo records) are no items: they are counted as
`skipped_warc_<type>`.
"""

from tasks.ingest.commit import commit_ingest, content_sha256
from tasks.ingest.config import IngestConfig
from tasks.ingest.layout import DATA_SCHEMA, QUARANTINE_SCHEMA, new_run_id
from tasks.ingest.plan import plan_ingest
from tasks.ingest.readers import read_item
from tasks.ingest.records import REASONS, Doc, ReadOptions, Reject
from tasks.ingest.shard import ingest_shard
from tasks.ingest.stage import run_ingest
from tasks.ingest.urls import SourceUnavailable, redact

__all__ = [
    "DATA_SCHEMA",
    "QUARANTINE_SCHEMA",
    "REASONS",
    "Doc",
    "IngestConfig",
    "ReadOptions",
    "Reject",
    "SourceUnavailable",
    "commit_ingest",
    "content_sha256",
    "ingest_shard",
    "new_run_id",
    "plan_ingest",
    "read_item",
    "redact",
    "run_ingest",
]
