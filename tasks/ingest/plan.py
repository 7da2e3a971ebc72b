"""Planning an ingest: the sources -> shards, groups of input items of bounded size, in order."""

from __future__ import annotations

import logging
import os
from typing import Any

from tasks.ingest.config import IngestConfig, as_config
from tasks.ingest.locations import enumerate_sources
from tasks.ingest.urls import redact

log = logging.getLogger("forja.ingest")


def plan_ingest(
    sources: list[str],
    config: IngestConfig | dict[str, Any] | None = None,
    exclude: list[str | os.PathLike] | None = None,
) -> list[dict[str, Any]]:
    """Shards of input items, in a deterministic order.

    A shard holds files up to `shard_bytes` / `shard_files`; a URL of unknown size gets a shard of
    its own. Each shard is a small JSON-able dict: {"index", "count", "sources", "bytes", "items",
    "skipped"}. Missing sources raise StageError here, before any work. `exclude` lists folders a
    folder walk skips (run_ingest passes OUT, in case it lies inside a source folder).
    """
    config = as_config(config)
    items, skipped = enumerate_sources(sources, config.include_hidden, exclude)
    shown = [redact(s) for s in sources]
    shards: list[dict[str, Any]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for item in items:
        n = item["size"] if item["size"] is not None else config.shard_bytes
        if current and (size + n > config.shard_bytes or len(current) >= config.shard_files):
            shards.append({"items": current, "bytes": size})
            current, size = [], 0
        current.append(item)
        size += n
    if current:
        shards.append({"items": current, "bytes": size})
    for i, shard in enumerate(shards):
        shard.update(index=i, count=len(shards), sources=shown)
        shard["skipped"] = skipped if i == 0 else {}
    n_urls = sum(it["kind"] == "url" for it in items)
    log.debug(
        "planned %d shard(s): %d item(s) (%d URL(s)), %.1f MB known size; skipped %s",
        len(shards),
        len(items),
        n_urls,
        sum(s["bytes"] for s in shards) / 1e6,
        {k: v for k, v in skipped.items() if v} or "nothing",
    )
    return shards
