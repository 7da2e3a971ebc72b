"""What every data stage shares: its manifest, Parquet writing, progress reporting.

A stage is a plain function: paths and a pydantic config in, files out, a small manifest back.
The manifest (`manifest.json` in the stage's output folder) is written last, atomically; a folder
with a manifest is complete. It records

    stage, format version, the config and its digest, the upstream manifest's digest,
    outputs (relative path, sha256, rows, bytes), counts (in, out, dropped by reason),
    and `digest`: a sha256 over the config, the upstream digest and every output's sha256 (or its
    `content_sha256`, where a file also holds something that never repeats, such as a timestamp).

`digest` is the stage output's identity: the next stage keys its cache on it, MLflow records it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import datetime as dt
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import AfterValidator, BaseModel

from lm.errors import DataError, ForjaError
from lm.fileio import atomic_path, atomic_write_json, read_json, sha256_file, sha256_json

MANIFEST = "manifest.json"
ROW_GROUP_ROWS = 8192  # bounded row groups: readers never need a whole file in memory

T = TypeVar("T")
R = TypeVar("R")


class StageError(ForjaError):
    """A stage cannot run or must fail (bad input folder, reject ratio exceeded, ...)."""


# ------------------------------------------------------------------ memory: one setting, one parser
# Each data stage has a `memory_limit` (a MemoryLimit): the memory its whole process tree may use.
# DuckDB gets DUCKDB_SHARE of it, split between the processes that run at once (it spills to disk
# beyond that); the rest is for what the stage holds itself (Arrow batches, UDF buffers, Python),
# which is bounded by batch sizes that do not grow with the corpus.
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", re.IGNORECASE)
DUCKDB_SHARE = 0.5
MIN_DUCKDB_BYTES = 64 * 10**6  # DuckDB needs some room to run at all


def memory_bytes(v: str) -> int:
    """'2GB' -> 2_000_000_000, '512MiB' -> 536_870_912; ValueError for anything else."""
    m = _SIZE.fullmatch(str(v))
    if m is None:
        raise ValueError(f"memory_limit must be a size such as '512MB' or '2GB'; got {v!r}")
    n = int(float(m[1]) * _UNITS[(m[2] or "").upper()])
    if n < 2 * MIN_DUCKDB_BYTES:
        raise ValueError(f"memory_limit {v!r} is too small: give at least 128MB")
    return n


def _check_memory(v: str) -> str:
    memory_bytes(v)
    return str(v).strip()


MemoryLimit = Annotated[str, AfterValidator(_check_memory)]


def duckdb_memory(memory_limit: str, processes: int = 1) -> str:
    """DuckDB's memory_limit for one of `processes` processes sharing the stage's `memory_limit`."""
    share = int(memory_bytes(memory_limit) * DUCKDB_SHARE / max(1, processes))
    return f"{max(share, MIN_DUCKDB_BYTES) // 2**20}MiB"


def configure_duckdb(
    con: Any,
    memory_limit: str,
    spill_dir: str | os.PathLike,
    *,
    processes: int = 1,
    threads: int | None = None,
    ordered: bool = True,
) -> None:
    """Bound a DuckDB connection: its share of `memory_limit`, spilling to `spill_dir` (local disk
    under the stage's work folder), `threads` (none: the cores this process may use, split between
    `processes`), and with `ordered=False` no insertion order kept where none is needed (lets
    DuckDB stream and write in parallel with less memory)."""
    if threads is None:
        threads = max(1, len(os.sched_getaffinity(0)) // max(1, processes))
    con.execute(f"SET memory_limit = '{duckdb_memory(memory_limit, processes)}'")
    con.execute("SET temp_directory = ?", [str(spill_dir)])
    con.execute(f"SET threads = {int(threads)}")
    con.execute(f"SET preserve_insertion_order = {'true' if ordered else 'false'}")


def duckdb_failed(what: str, e: Exception, stage: str, memory_limit: str) -> StageError:
    """The StageError for a DuckDB query of `stage` that failed while doing `what`. Out of memory,
    it names the setting that fixes it: DuckDB's own advice is SQL (SET memory_limit), which the
    stage sets itself from its `memory_limit`."""
    import duckdb

    if not isinstance(e, duckdb.OutOfMemoryException):
        return StageError(f"{what} failed: {e}")
    reason = str(e).strip().splitlines()[0]
    more = f"{2 * memory_bytes(memory_limit) // 10**6}MB"
    return StageError(
        f"{what} ran out of memory: {reason}; DuckDB gets {duckdb_memory(memory_limit)} of memory_limit="
        f"{memory_limit} and spills past it where it can. Give the stage more: --set memory_limit={more} "
        f"(in a flow: --set {stage}.memory_limit={more})"
    )


QUERY_INTERRUPTED = "Query interrupted"


@contextlib.contextmanager
def interrupts_kept() -> Iterator[None]:
    """Keep Ctrl-C an interrupt through DuckDB.

    Ctrl-C during a DuckDB query cancels the query, and DuckDB raises RuntimeError("Query
    interrupted") in place of the KeyboardInterrupt, which is lost. A stage would then end as a
    failed stage, not an interrupted run: the flow run Failed where it should be Crashed, no resume
    line from the CLI. Raised again here as KeyboardInterrupt, the DuckDB error as its cause. Around
    every call into a stage's work (tasks/stage.py, flows/stages.py)."""
    try:
        yield
    except Exception as e:
        if str(e) == QUERY_INTERRUPTED or type(e).__name__ == "InterruptException":
            raise KeyboardInterrupt(f"interrupted during a DuckDB query ({e})") from e
        raise


def in_threads(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """fn over items in `threads` threads, results in the items' order, with at most 2 x threads
    items read ahead (Executor.map would read them all first)."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        pending: collections.deque[concurrent.futures.Future[R]] = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def sql_string(s: str | os.PathLike) -> str:
    """A SQL string literal."""
    return "'" + str(s).replace("'", "''") + "'"


def sql_list(paths: list[str] | list[Path]) -> str:
    """A SQL list of string literals."""
    return "[" + ", ".join(sql_string(p) for p in paths) + "]"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def write_parquet(
    table: pa.Table, path: str | os.PathLike, row_group_rows: int = ROW_GROUP_ROWS
) -> dict[str, Any]:
    """Write a table atomically with zstd; return its output record (path, sha256, rows, bytes)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_rows, write_statistics=True)
    return {
        "path": path.name,
        "sha256": sha256_file(path),
        "rows": table.num_rows,
        "bytes": path.stat().st_size,
    }


def output_record(
    path: str | os.PathLike, root: str | os.PathLike, rows: int | None = None
) -> dict[str, Any]:
    """The manifest entry of a file already written under `root`."""
    path = Path(path)
    rec = {"path": str(path.relative_to(root)), "sha256": sha256_file(path), "bytes": path.stat().st_size}
    if rows is not None:
        rec["rows"] = rows
    return rec


def config_dict(config: BaseModel | dict[str, Any]) -> dict[str, Any]:
    return config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)


def make_manifest(
    stage: str,
    config: BaseModel | dict[str, Any],
    outputs: list[dict[str, Any]],
    counts: dict[str, Any],
    upstream: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    cfg = config_dict(config)
    outputs = sorted(outputs, key=lambda o: o["path"])
    digest = sha256_json(
        {
            "stage": stage,
            "config": cfg,
            "upstream": upstream,
            # `content_sha256`, where given, leaves out what never repeats (ingest's timestamps),
            # so the same content gives the same digest
            "outputs": [(o["path"], o.get("content_sha256", o["sha256"])) for o in outputs],
        }
    )
    return {
        "stage": stage,
        "version": 1,
        "created_at": utcnow().isoformat(),
        "config": cfg,
        "config_sha256": sha256_json(cfg),
        "upstream": upstream,
        "outputs": outputs,
        "counts": counts,
        "digest": digest,
        **extra,
    }


def write_manifest(out_dir: str | os.PathLike, manifest: dict[str, Any]) -> dict[str, Any]:
    atomic_write_json(Path(out_dir) / MANIFEST, manifest)
    return manifest


def read_manifest(folder: str | os.PathLike, stage: str | None = None) -> dict[str, Any]:
    """The manifest of a finished stage folder, or a DataError saying which stage to run."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        hint = f" (run `forja {stage}` to make it)" if stage else ""
        raise DataError(f"{folder} is not a finished stage output: {path} is missing{hint}")
    m = read_json(path)
    if stage is not None and m.get("stage") != stage:
        raise DataError(f"{path} is the output of stage {m.get('stage')!r}, expected {stage!r}")
    return m


def verify_outputs(folder: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Check that every output a manifest lists exists with its recorded sha256."""
    for o in manifest["outputs"]:
        p = Path(folder) / o["path"]
        if not p.is_file():
            raise DataError(f"{p} is listed in {Path(folder) / MANIFEST} but missing; re-run the stage")
        if sha256_file(p) != o["sha256"]:
            raise DataError(f"{p} does not match its sha256 in the manifest; re-run the stage")


class Progress:
    """Progress as log lines (readable in a terminal, a CI log and the Prefect UI alike).

    `update(n, nbytes)` after each item; a line goes out at most every `every_s` seconds and at the end.
    """

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        unit: str = "items",
        logger: logging.Logger | None = None,
        every_s: float = 5.0,
    ):
        self.desc, self.total, self.unit = desc, total, unit
        self.log = logger or logging.getLogger("forja.progress")
        self.every_s = every_s
        self.n = self.nbytes = 0
        self.t0 = self.t_last = time.perf_counter()

    def update(self, n: int = 1, nbytes: int = 0) -> None:
        self.n += n
        self.nbytes += nbytes
        now = time.perf_counter()
        if now - self.t_last >= self.every_s:
            self.t_last = now
            self._emit(now)

    def _emit(self, now: float) -> None:
        elapsed = max(now - self.t0, 1e-9)
        parts = [f"{self.desc}: {self.n:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}"]
        if self.total:  # a total is an estimate (bytes of compressed files, say): never past 100%
            parts.append(f"{min(100.0, 100 * self.n / self.total):.1f}%")
        if self.nbytes:
            parts.append(f"{self.nbytes / 1e6 / elapsed:.1f} MB/s")
        if self.total and self.n:
            parts.append(f"eta {max(0.0, elapsed * (self.total - self.n) / self.n):.0f}s")
        parts.append(f"{elapsed:.1f}s")
        self.log.info(", ".join(parts))

    def close(self) -> None:
        self._emit(time.perf_counter())

    def wrap(self, items: Iterable[T]) -> Iterator[T]:
        for item in items:
            yield item
            self.update()
        self.close()
