"""The clean stage's glue: run_clean runs the steps in sequence, with its cache, and finalize
publishes OUT (parts, report, manifest) atomically.

    run_clean(in_dir, out, config)  -> input_parts, clean_shard per part, dedup_shards, finalize
    finalize(shard_results, dedup_result, out, config, upstream) -> parts, report, manifest

To be replaced by the generic Stage runner (issue #9): kept as it was, apart from imports.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from lm.errors import DataError
from lm.fileio import TMP_PREFIX, atomic_write_json, fsync_dir
from lm.fileio import sha256_json as _sha256_json
from tasks.clean.config import CleanConfig
from tasks.clean.config import as_config as _as_config
from tasks.clean.dedup import dedup_shards
from tasks.clean.engine import clean_shard, connect, input_parts
from tasks.clean.output import write_dropped, write_parts
from tasks.clean.report import build_report
from tasks.common import (
    MANIFEST,
    Progress,
    StageError,
    make_manifest,
    output_record,
    read_manifest,
    verify_outputs,
    write_manifest,
)

log = logging.getLogger("forja.clean")

STAGE = "clean"


def finalize(
    shard_results: list[dict[str, Any]],
    dedup_result: dict[str, Any],
    out: str | os.PathLike,
    config: CleanConfig | dict[str, Any] | None = None,
    upstream: str | None = None,
    work_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write OUT: the kept rows in (doc_id, source, path, offset) order cut into parts of about
    `part_bytes`, dropped.parquet, report.json, and the manifest last. OUT is built in a temporary
    folder beside it and renamed into place; an older clean output there is replaced."""
    config = _as_config(config)
    out = Path(out)
    work_dir = Path(work_dir) if work_dir else Path(dedup_result["output"]).parent
    _check_out(out)
    works = [r["work"] for r in shard_results]
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out.name}.", dir=out.parent))
    try:
        with connect(config, work_dir) as con:
            parts, bytes_out = write_parts(con, works, dedup_result["output"], tmp, config)
            dropped = write_dropped(con, works, dedup_result["output"], tmp)
        report = build_report(shard_results, dedup_result, config, bytes_out)
        atomic_write_json(tmp / "report.json", report)
        artifacts = [output_record(tmp / "report.json", tmp), dropped]
        counts = {
            "rows_in": report["rows_in"],
            "rows_out": report["rows_out"],
            "bytes_in": report["bytes_in"],
            "bytes_out": report["bytes_out"],
            "dropped": {r["rule"]: r["dropped"] for r in report["rules"] if r["kind"] != "map"},
            "changed": {r["rule"]: r["changed"] for r in report["rules"] if r["kind"] == "map"},
        }
        if sum(p["rows"] for p in parts) != report["rows_out"]:  # pragma: no cover - internal invariant
            raise StageError(
                f"internal error: wrote {sum(p['rows'] for p in parts)} rows, expected {report['rows_out']}"
            )
        manifest = make_manifest(
            STAGE, config.identity(), parts, counts, upstream=upstream, artifacts=artifacts, report=report
        )
        write_manifest(tmp, manifest)
        fsync_dir(tmp)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _check_out(out: Path) -> None:
    """OUT may be missing, empty, or an earlier clean output; anything else is not ours to replace."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise StageError(f"{out} exists and is not a clean output folder; choose another --out or remove it")
    if (out / MANIFEST).is_file():
        m = read_manifest(out)
        if m.get("stage") != STAGE:
            raise StageError(f"{out} holds the output of stage {m.get('stage')!r}; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out.name}.old.", dir=out.parent))
        os.rename(out, old / "x")
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
    fsync_dir(out.parent)


def _cached(out: Path, upstream: str, config: CleanConfig) -> dict[str, Any] | None:
    if not (out / MANIFEST).is_file():
        return None
    try:
        m = read_manifest(out, STAGE)
        if m.get("upstream") != upstream or m.get("config_sha256") != _sha256_json(config.identity()):
            return None
        verify_outputs(out, m)
        verify_outputs(out, {"outputs": m.get("artifacts", [])})
    except (DataError, OSError, ValueError):
        return None
    return m


def _remove_own_leftovers(out: Path) -> None:
    """Delete what an interrupted clean into `out` left beside it (.tmp-<out>.*), and nothing else:
    other stages may be writing their own temporary files in the same folder right now."""
    ours = re.compile(rf"{re.escape(TMP_PREFIX + out.name)}\.(work\.|old\.)?[a-z0-9_]{{8}}")
    for p in out.parent.glob(f"{TMP_PREFIX}{out.name}.*"):
        if not ours.fullmatch(p.name):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _clean_parts(parts: list[Path], work_dir: Path, config: CleanConfig) -> list[dict[str, Any]]:
    """clean_shard over every part: in this process, or in `config.workers` processes."""
    progress = Progress("clean", total=len(parts), unit="parts", logger=log)
    workers = min(config.workers, len(parts))
    if workers <= 1:
        results = []
        for p in parts:
            results.append(clean_shard(p, work_dir, config))
            progress.update(1, results[-1]["bytes_in"])
    else:
        # spawn: a fresh interpreter per worker (forking a process that holds DuckDB threads is unsafe)
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = [pool.submit(clean_shard, p, work_dir, config.model_dump()) for p in parts]
            for f in concurrent.futures.as_completed(futures):
                progress.update(1, f.result()["bytes_in"])
            results = [f.result() for f in futures]  # in part order, whatever finished first
    progress.close()
    return results


def run_clean(
    in_dir: str | os.PathLike, out: str | os.PathLike, config: CleanConfig | dict[str, Any] | None = None
) -> dict[str, Any]:
    """Clean an ingest output folder into OUT; returns the manifest (with the report).

    A finished OUT for the same ingest digest and config is returned as is (nothing runs)."""
    config = _as_config(config)
    in_dir, out = Path(in_dir), Path(out)
    upstream = read_manifest(in_dir, "ingest")["digest"]
    _remove_own_leftovers(out)  # also when cached: a run killed after publishing leaves its work folder
    cached = _cached(out, upstream, config)
    if cached is not None:
        log.info("%s is up to date (ingest %s, same config); nothing to do", out, upstream[:12])
        return cached
    parts = input_parts(in_dir, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    _check_out(out)
    work_dir = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out.name}.work.", dir=out.parent))
    t0 = time.perf_counter()
    try:
        results = _clean_parts(parts, work_dir, config)
        dd = dedup_shards(results, work_dir, config)
        manifest = finalize(results, dd, out, config, upstream=upstream, work_dir=work_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    c = manifest["counts"]
    dt = time.perf_counter() - t0
    log.info(
        "clean: %d -> %d rows, %.1f -> %.1f MB in %.1fs (%.1f MB/s); dropped %s",
        c["rows_in"],
        c["rows_out"],
        c["bytes_in"] / 1e6,
        c["bytes_out"] / 1e6,
        dt,
        c["bytes_in"] / 1e6 / max(dt, 1e-9),
        c["dropped"],
    )
    return manifest
