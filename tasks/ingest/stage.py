"""The ingest stage declared once (tasks/stage.py runs it, from the CLI and from the flows):

    plan       the sources' items, in shards of bounded size (a URL of unknown size alone)
    run_shard  read one shard's items into staged Parquet parts, bad input into quarantine (map this)
    write      commit: drop what is already stored, publish a new snapshot, manifest last

Ingest is incremental: its folder grows in place, one snapshot per run that found something new,
under a lock (tasks/ingest/commit.py). Its key covers a fingerprint of what the sources hold now
(every item's path, size and modification time or, for an object in a store, ETag, and the
sources as given), the config and the code; an unchanged fingerprint means nothing is read at all.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lm.fileio import sha256_json
from tasks.common import StageError, duckdb_failed
from tasks.ingest.commit import commit_ingest
from tasks.ingest.config import IngestConfig, identity_dict
from tasks.ingest.layout import LOCK, STAGE, STAGING, new_run_id
from tasks.ingest.locations import enumerate_sources
from tasks.ingest.plan import plan_ingest
from tasks.ingest.shard import ingest_shard
from tasks.stage import Stage, StageRun, map_planned, register, run_stage

log = logging.getLogger("forja.ingest")

OWN_NAMES = {STAGING, LOCK, "data", "quarantine", "snapshots"}  # what a first, killed run may leave


@register
class IngestStage(Stage):
    name = STAGE
    config_model = IngestConfig
    code = ("tasks.ingest",)
    incremental = True
    verify_cached = False  # a dataset may be large: check each part's size, do not re-hash it

    def identity(self, config: IngestConfig) -> Any:
        return identity_dict(config)

    def upstream_digest(self, inputs: list[str], config: IngestConfig, out: Path | None) -> str:
        """What the sources hold now: every item's path, size and modification time."""
        items, _ = enumerate_sources(list(inputs), config.include_hidden, [out] if out else None)
        rows = []
        for item in items:
            row = [item.get("kind"), item.get("path"), item.get("size")]
            if item.get("etag"):  # an object-store object: its ETag changes with its content
                row.append(item["etag"])
            if item.get("kind") != "url" and item.get("path") and os.path.exists(item["path"]):
                row.append(os.stat(item["path"]).st_mtime_ns)
            rows.append(row)
        return sha256_json({"sources": list(inputs), "items": rows})

    def check_out(self, out: Path) -> None:
        if out.is_dir() and not (out / "manifest.json").exists():
            strangers = [p.name for p in out.iterdir() if p.name not in OWN_NAMES]
            if strangers:
                raise StageError(
                    f"--out {out} holds files that are not an ingest dataset's ({', '.join(strangers[:3])}); "
                    "choose a new or empty folder"
                )
            return
        super().check_out(out)

    def plan(self, run: StageRun) -> list[dict[str, Any]]:
        shards = plan_ingest(run.inputs, run.config, exclude=[run.out])
        if not shards:
            raise StageError(
                f"the sources {', '.join(run.inputs)} hold no files to read (hidden files are skipped "
                "unless include_hidden=true)"
            )
        run_id = new_run_id()
        for shard in shards:
            shard.update(run_id=run_id, out=str(run.out))
        items = sum(len(s["items"]) for s in shards)
        log.info("ingest %s: %d item(s) in %d shard(s)", run_id, items, len(shards))
        return shards

    def run_shard(self, shard: dict[str, Any], work: str, config: dict[str, Any]) -> dict[str, Any]:
        return ingest_shard(shard, shard["out"], IngestConfig.model_validate(config), shard["run_id"])

    def write(self, run: StageRun, results: list[dict[str, Any]]) -> dict[str, Any]:
        import duckdb  # as commit.py does: only the commit needs it

        try:
            return commit_ingest(run.out, results, run.config, key=run.key)
        except duckdb.OutOfMemoryException as e:
            raise duckdb_failed("ingest's commit", e, "ingest", run.config.memory_limit) from e

    def summary(self, manifest: dict[str, Any]) -> str:
        return f"ingest: snapshot {manifest.get('snapshot', 0)}" + (
            "" if manifest.get("changed", True) else " (nothing new)"
        )


def run_ingest(
    sources: list[str],
    out: str | os.PathLike,
    config: IngestConfig | dict[str, Any] | None = None,
    fresh: bool = False,
) -> dict[str, Any]:
    """The whole stage (what `forja ingest` does); returns the manifest plus "changed" and "run"
    (see commit_ingest). The shards are read in as many processes as the plan says
    (plan.reading_processes: up to `workers`), the commit runs here. Sources unchanged since the
    last run: nothing is read, unless `fresh` (then only what is new is added, as always)."""
    return run_stage(STAGE, list(sources), out, config, fresh=fresh, map_shards=map_planned)
