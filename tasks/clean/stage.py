"""The clean stage declared once (tasks/stage.py runs it, from the CLI and from the flows):

    plan       the ingest output's data parts, checked
    run_shard  every per-document rule on one part, as one streaming DuckDB query (map this)
    write      exact and near dedup over all parts, then the kept parts, dropped.parquet and
               report.json

Its key covers the ingest digest, the config's identity (engine settings left out; user rules by
content), and the code it runs: this package, every built-in rule file in tasks/sql/ and the
user's rule files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import duckdb

from tasks.clean.config import CleanConfig, rule_files
from tasks.clean.dedup import dedup_shards
from tasks.clean.engine import clean_shard, input_parts, shard_processes
from tasks.clean.output import write_output
from tasks.clean.report import ingest_duplicates
from tasks.common import duckdb_failed
from tasks.stage import Stage, StageRun, map_planned, register, run_stage

log = logging.getLogger("forja.clean")

STAGE = "clean"


@register
class CleanStage(Stage):
    name = STAGE
    config_model = CleanConfig
    upstream_stage = "ingest"
    code = ("tasks.clean", "tasks.sql")

    def identity(self, config: CleanConfig) -> Any:
        return config.identity()

    def code_files(self, config: CleanConfig) -> list[Path]:
        files = super().code_files(config)
        return files + [p for p in rule_files(config) if p not in files]

    def plan(self, run: StageRun) -> list[dict[str, Any]]:
        return plan_shards(run.inputs, run.config)

    def run_shard(self, shard: dict[str, Any], work: str, config: dict[str, Any]) -> dict[str, Any]:
        return clean_shard(shard["part"], work, config, processes=shard.get("processes", 1))

    def write(self, run: StageRun, results: list[dict[str, Any]]) -> dict[str, Any]:
        work = run.staging / "work"
        try:
            dedup = dedup_shards(results, work, run.config)
            dups = ingest_duplicates(run.inputs)
            return write_output(results, dedup, run.staging, run.config, run.upstream, work, dups)
        except duckdb.OutOfMemoryException as e:  # the rules' own queries say which rule
            raise duckdb_failed("clean's dedup and output", e, STAGE, run.config.memory_limit) from e

    def summary(self, manifest: dict[str, Any]) -> str:
        c = manifest["counts"]
        return (
            f"clean: {c['rows_in']:,} -> {c['rows_out']:,} rows, {c['bytes_in'] / 1e6:.1f} -> "
            f"{c['bytes_out'] / 1e6:.1f} MB; dropped {c['dropped']}"
        )


def plan_shards(in_dir: str | Path, config: CleanConfig) -> list[dict[str, Any]]:
    """The shards of a clean of `in_dir`: its data parts, checked, and how many processes run them."""
    parts = input_parts(in_dir, config)
    processes = shard_processes(parts, config)
    return [{"index": i, "part": str(p), "processes": processes} for i, p in enumerate(parts)]


def run_clean(in_dir, out, config: CleanConfig | dict[str, Any] | None = None) -> dict[str, Any]:
    """Clean an ingest output folder into OUT (what `forja clean` does); returns the manifest (with
    the report). OUT already holding the output of the same key is returned as it is. The parts
    are cleaned in as many processes as the plan says (engine.shard_processes: up to `workers`)."""
    cfg = CleanStage().validate(config)
    return run_stage(STAGE, in_dir, out, cfg, map_shards=map_planned)
