"""The per-part engine: a configured DuckDB connection, the checked input parts, and clean_shard,
which runs every per-document rule over one part as ONE streaming query into the part's work file.

    connect(config, work_dir)              -> DuckDB with the limits, the rules' variables and UDFs
    input_parts(in_dir, config)            -> the ingest data parts (checked)
    clean_shard(part_path, work_dir, config) -> per-document rules on one part (map this)

Nothing is materialised between rules: each rule is a CTE over the previous one (chain.py).

What bounds each phase, and how the cores are shared:

The stage uses `workers` cores (config.cores(): all of them by default), and no more:

- clean_shard: CPU, in the Python UDFs (text_stats, minhash, language_of, eval_overlap), which
  DuckDB calls one at a time under the GIL; DuckDB's own threads read Parquet, run the SQL rules
  and write the work file around them, so one process with two threads keeps 1.7 cores busy, and
  with one thread one core. Shards run in parallel in processes (shard_processes of them in
  run_clean, or as an orchestrator maps clean_shard): each of the P processes gets cores // P
  DuckDB threads and memory_limit / 2 / P of DuckDB memory (`connect(processes=P)`), so processes
  neither fight for cores nor add up past the memory setting.
- dedup and output (one process): DuckDB's sorts, joins and aggregates over the whole corpus,
  bound by disk and DuckDB threads (one per core), spilling past half of memory_limit; what
  Python holds there comes in batches sized from the other half (dedup.pair_batch). The exact
  check of the candidate pairs (numpy sorts of shingle hashes, which release the GIL) runs its
  batches in one thread per core.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from lm.errors import DataError
from lm.fileio import atomic_path
from tasks.clean.chain import chain_sql, register_udfs, validate_chain
from tasks.clean.config import CleanConfig, as_config
from tasks.clean.decontam import OVERLAP_TYPE
from tasks.clean.minhash import MINHASH_TYPE
from tasks.clean.report import diff_snippets, doc_key, snippet
from tasks.clean.rules import Rule, check_variables
from tasks.common import (
    MANIFEST,
    ROW_GROUP_ROWS,
    configure_duckdb,
    duckdb_failed,
    read_manifest,
    sql_string,
    verify_outputs,
)
from tasks.stage import planned_processes

log = logging.getLogger("forja.clean")

REQUIRED_COLUMNS = ("doc_id", "source", "path", "offset", "text")
KEY_ORDER = 'doc_id, source, path, "offset"'
PROCESS_BYTES = 32 << 20  # input parts per cleaning process at least (below: fewer processes)
# The exact-dedup key (see 080_exact_dedup.sql): md5 of the cleaned text, lower-cased.
NORM_KEY_SQL = "md5_number(lower(text))"


@contextlib.contextmanager
def connect(
    config: CleanConfig, work_dir: str | os.PathLike, ordered: bool = True, processes: int = 1
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection with the engine limits, the rules' variables and the Python UDFs.

    It spills to a folder of its own under `work_dir` (shards cleaned at once by threads of one
    process never share one), removed with the connection. `ordered=False` lets DuckDB write
    unordered results in parallel (the per-shard work files). `processes`: how many connections
    run at once in processes of their own (clean_shard under `workers`), each getting its share of
    memory_limit and of the cores. Results that must keep their ORDER
    BY are fetched with `con.sql(...)`: with insertion order off, DuckDB 2.0's DB-API path
    (`con.execute(...).to_arrow_table()`) loses the order.
    """
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    spill = Path(tempfile.mkdtemp(prefix="duckdb-spill-", dir=work_dir))
    con = duckdb.connect()
    try:
        _configure(con, config, spill, ordered, processes)
        yield con
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def _configure(
    con: duckdb.DuckDBPyConnection, config: CleanConfig, spill: Path, ordered: bool, processes: int
) -> None:
    threads = config.duckdb_threads(processes)
    configure_duckdb(con, config.memory_limit, spill, processes=processes, threads=threads, ordered=ordered)
    con.execute("SET enable_progress_bar = false")
    for name, value in config.sql_variables().items():
        con.execute(f"SET VARIABLE {name} = ?", [value])
    register_udfs(con, config.minhash_params(), config.decontam_params())


def input_parts(in_dir: str | os.PathLike, config: CleanConfig | dict[str, Any] | None = None) -> list[Path]:
    """The data parts listed in the ingest manifest of `in_dir`, checked (exists, columns, sha256)."""
    config = as_config(config)
    in_dir = Path(in_dir)
    manifest = read_manifest(in_dir, "ingest")
    outs = [o for o in manifest.get("outputs", []) if str(o.get("path", "")).endswith(".parquet")]
    outs = [o for o in outs if not str(o["path"]).startswith("quarantine/")]
    if config.verify_input:
        verify_outputs(in_dir, {"outputs": outs})
    parts = []
    for o in sorted(outs, key=lambda o: o["path"]):
        p = in_dir / o["path"]
        if not p.is_file():
            raise DataError(f"{p} is listed in {in_dir / MANIFEST} but missing; re-run `forja ingest`")
        _check_schema(p)
        parts.append(p)
    return parts


def shard_processes(parts: list[Path], config: CleanConfig) -> int:
    """How many processes run_clean cleans the parts in: one per core of the stage, at most one per
    part and per PROCESS_BYTES of parts (a fresh interpreter costs ~1.2 s of imports: a small
    corpus is cleaned in this process, with all the stage's cores as DuckDB threads)."""
    size = sum(p.stat().st_size for p in parts)
    return planned_processes(config.cores(), len(parts), size, PROCESS_BYTES)


def _check_schema(part: Path) -> None:
    try:
        schema = pq.read_schema(part)
    except Exception as e:
        raise DataError(f"{part}: not a readable Parquet file ({e}); re-run `forja ingest`") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise DataError(
            f"{part}: missing column(s) {missing}; clean needs {list(REQUIRED_COLUMNS)} "
            "(the ingest stage's output)"
        )
    if not pa.types.is_string(schema.field("text").type) and not pa.types.is_large_string(
        schema.field("text").type
    ):
        raise DataError(f"{part}: column 'text' is {schema.field('text').type}, expected a string column")


def source_sql(part: Path) -> str:
    """The part's rows; a missing text reads as '' (dropped as 'empty'), a missing doc_id is
    recomputed from the text (the ingest contract: sha256 of the UTF-8 text)."""
    return (
        "SELECT coalesce(doc_id, sha256(coalesce(text, ''))) AS doc_id, source, path, "
        f'"offset"::BIGINT AS "offset", coalesce(text, \'\') AS text FROM read_parquet({sql_string(part)})'
    )


def clean_shard(
    part_path: str | os.PathLike,
    work_dir: str | os.PathLike,
    config: CleanConfig | dict[str, Any] | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """Apply the per-document rules to one input part (one of `processes` cleaning parts at once,
    which share the stage's cores and memory).

    Writes `work_dir/shards/<part>.parquet`: every input row with its cleaned text, `_drop` and
    `_reason`, the `_changed_<rule>` flags, and the dedup keys (`norm_key`, `mh`) of the rows
    kept. Returns a small dict: paths, row and byte counts, and per rule its counts and examples.
    """
    config = as_config(config)
    part = Path(part_path)
    work_dir = Path(work_dir)
    _check_schema(part)
    rules = config.enabled()
    check_variables(rules, config.sql_variables())
    shard_dir = work_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    work_file = shard_dir / f"{part.parent.name}-{part.stem}.parquet"
    t0 = time.perf_counter()
    with connect(config, work_dir, ordered=False, processes=processes) as con:
        validate_chain(con, rules)
        ctes, last = chain_sql(rules, source_sql(part))
        changed = [f'"_changed_{r.name}"' for r in rules if r.kind == "map"]
        norm_key = NORM_KEY_SQL if config.is_on("exact_dedup") else "NULL::UHUGEINT"
        mh = "minhash(text)" if config.is_on("near_dedup") else f"NULL::{MINHASH_TYPE}"
        names = {r.name for r in rules}
        lang = (
            "lang, lang_score" if "language" in names else "NULL::VARCHAR AS lang, NULL::DOUBLE AS lang_score"
        )
        hit = "eval_hit" if "decontaminate" in names else f"NULL::{OVERLAP_TYPE} AS eval_hit"
        select = (
            f'{ctes}\nSELECT doc_id, source, path, "offset", text, strlen(text)::BIGINT AS n_bytes, '
            f"{lang}, {hit}, _bytes_in, _drop, _reason{''.join(', ' + c for c in changed)}, "
            f"CASE WHEN _drop IS NULL THEN {norm_key} END AS norm_key, "
            f"CASE WHEN _drop IS NULL THEN {mh} END AS mh FROM {last}"
        )
        with atomic_path(work_file, fsync=False) as tmp:  # a temporary file: no fsync, no compression
            try:
                con.execute(
                    f"COPY ({select}) TO {sql_string(tmp)} (FORMAT parquet, COMPRESSION uncompressed, ROW_GROUP_SIZE {ROW_GROUP_ROWS})"
                )
            except duckdb.Error as e:
                raise duckdb_failed(f"cleaning {part}", e, "clean", config.memory_limit) from e
        result = _summarise_shard(con, part, work_file, rules, config)
    dt = time.perf_counter() - t0
    log.info(
        "%s: %d -> %d rows, %.1f MB in %.1fs (%.1f MB/s)",
        part.name,
        result["rows_in"],
        result["rows_out"],
        result["bytes_in"] / 1e6,
        dt,
        result["bytes_in"] / 1e6 / max(dt, 1e-9),
    )
    return result


def _summarise_shard(
    con: duckdb.DuckDBPyConnection, part: Path, work_file: Path, rules: list[Rule], config: CleanConfig
) -> dict[str, Any]:
    w = f"read_parquet({sql_string(work_file)})"
    k = config.examples_per_rule
    maps = [r for r in rules if r.kind == "map"]
    totals = con.execute(
        "SELECT count(*), coalesce(sum(_bytes_in), 0), count(*) FILTER (WHERE _drop IS NULL), "
        "coalesce(sum(n_bytes) FILTER (WHERE _drop IS NULL), 0)"
        + "".join(f', count(*) FILTER (WHERE "_changed_{r.name}")' for r in maps)
        + f" FROM {w}"
    ).fetchone()
    rows_in, bytes_in, rows_out, bytes_out = (int(x) for x in totals[:4])
    n_changed = dict(zip([r.name for r in maps], (int(x) for x in totals[4:]), strict=True))
    dropped: dict[str, dict[str, int]] = {}
    for rule, reason, n in con.execute(
        f"SELECT _drop, _reason, count(*) FROM {w} WHERE _drop IS NOT NULL GROUP BY ALL ORDER BY ALL"
    ).fetchall():
        dropped.setdefault(rule, {})[reason] = int(n)

    summary: dict[str, dict[str, Any]] = {}
    traced: dict[str, list[dict[str, Any]]] = {}
    for r in rules:
        if r.kind == "map":
            summary[r.name] = {"kind": "map", "changed": n_changed[r.name], "examples": []}
            if k and n_changed[r.name]:
                rows = con.execute(
                    f'SELECT doc_id, source, path, "offset" FROM {w} WHERE "_changed_{r.name}" '
                    f"ORDER BY {KEY_ORDER} LIMIT {k}"
                ).fetchall()
                traced[r.name] = [
                    dict(zip(("doc_id", "source", "path", "offset"), x, strict=True)) for x in rows
                ]
        else:
            reasons = dropped.get(r.name, {})
            ex = []
            for reason in reasons if k else []:
                for doc_id, source, path, offset, text in con.execute(
                    f'SELECT doc_id, source, path, "offset", text FROM {w} WHERE _drop = ? AND _reason = ? '
                    f"ORDER BY {KEY_ORDER} LIMIT {k}",
                    [r.name, reason],
                ).fetchall():
                    ex.append(
                        {
                            "doc_id": doc_id,
                            "source": source,
                            "path": path,
                            "offset": offset,
                            "reason": reason,
                            "text": snippet(text),
                        }
                    )
            summary[r.name] = {
                "kind": "filter",
                "dropped": sum(reasons.values()),
                "reasons": reasons,
                "examples": ex,
            }
    if "language" in summary:
        summary["language"]["languages"] = dict(
            con.execute(
                f"SELECT lang, count(*) FROM {w} WHERE lang IS NOT NULL GROUP BY ALL ORDER BY ALL"
            ).fetchall()
        )
    if "decontaminate" in summary:
        summary["decontaminate"].update(_overlap_summary(con, w, k))
    if traced:
        _trace_examples(con, part, rules, traced, summary)
    return {
        "part": str(part),
        "work": str(work_file),
        "rows_in": rows_in,
        "bytes_in": bytes_in,
        "rows_out": rows_out,
        "bytes_out": bytes_out,
        "rules": summary,
    }


def _overlap_summary(con: duckdb.DuckDBPyConnection, w: str, k: int) -> dict[str, Any]:
    """The documents sharing an n-gram with an evaluation text, dropped or not: how many, how many
    were kept as the source of a frozen text, and the first `k` with the n-gram they share."""
    overlap, sources = con.execute(
        f"SELECT count(eval_hit), count(*) FILTER (WHERE eval_hit.source) FROM {w}"
    ).fetchone()
    rows = con.execute(
        f'SELECT doc_id, source, path, "offset", eval_hit.ngram, eval_hit.hits, eval_hit.eval, '
        f"eval_hit.source, _drop = 'decontaminate', text FROM {w} WHERE eval_hit IS NOT NULL "
        f"ORDER BY {KEY_ORDER} LIMIT {k}"
    ).fetchall()
    keys = ("doc_id", "source", "path", "offset", "ngram", "shared_ngrams", "eval_text", "eval_source")
    examples = [
        {
            **dict(zip(keys, r[:8], strict=True)),
            "dropped": bool(r[8]),
            "reason": "eval_overlap",
            "text": snippet(r[9]),
        }
        for r in rows
    ]
    return {"overlap": int(overlap), "eval_sources": int(sources), "examples": examples}


def _trace_examples(
    con: duckdb.DuckDBPyConnection,
    part: Path,
    rules: list[Rule],
    traced: dict[str, list[dict[str, Any]]],
    summary: dict[str, dict[str, Any]],
) -> None:
    """Re-run the chain on the few example rows only, keeping each map rule's input and output."""
    ids = sorted({e["doc_id"] for exs in traced.values() for e in exs})
    source = f"SELECT * FROM ({source_sql(part)}) WHERE doc_id IN (SELECT unnest(?::VARCHAR[]))"
    ctes, last = chain_sql(rules, source, trace=True)
    cur = con.execute(f"{ctes} SELECT * FROM {last}", [ids])
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    for rule, examples in traced.items():
        for ex in examples:
            match = next((row for row in rows if doc_key(row) == ex), None)
            if match is None:  # pragma: no cover - the same rows, the same rules
                continue
            before, after = diff_snippets(match[f"_before_{rule}"], match[f"_after_{rule}"])
            if rule == "pii":
                before = None  # never copy the personal data we just removed into the report
            summary[rule]["examples"].append({**ex, "before": before, "after": after})
