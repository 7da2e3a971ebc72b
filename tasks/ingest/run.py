"""The whole ingest stage in one process: plan, read every shard, commit."""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

from tasks.ingest.commit import commit_ingest
from tasks.ingest.config import IngestConfig, as_config
from tasks.ingest.layout import new_run_id
from tasks.ingest.plan import plan_ingest
from tasks.ingest.shard import ingest_shard

log = logging.getLogger("forja.ingest")


def run_ingest(
    sources: list[str], out: str | os.PathLike, config: IngestConfig | dict[str, Any] | None = None
) -> dict[str, Any]:
    """Plan, read every shard, commit: the whole stage in one process. See commit_ingest."""
    config = as_config(config)
    out = Path(out)
    run_id = new_run_id()
    t0 = dt.datetime.now(dt.UTC)
    shards = plan_ingest(sources, config, exclude=[out])
    results = [ingest_shard(s, out, config, run_id) for s in shards]
    result = commit_ingest(out, results, config)
    log.info("ingest %s done in %.1fs", run_id, (dt.datetime.now(dt.UTC) - t0).total_seconds())
    return result
