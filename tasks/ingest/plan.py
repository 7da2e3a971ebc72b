"""Planning an ingest: the sources -> shards, groups of input items of bounded size, in order.

A file of JSON Lines (not compressed) larger than `shard_bytes` is cut at line ends into stretches
of about `shard_bytes`, each an item of its own with its byte range and the number of the line it
starts on: one big dump is read by as many processes as it has stretches, and every document
keeps the line number it has in the file. Finding the cuts reads the file once, counting lines
(12.9 s for 10 GB on the bench machine, bench/README.md), which also brings it into the page cache
for the shards; nothing else of it is parsed here.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from tasks.ingest.config import IngestConfig, as_config
from tasks.ingest.locations import enumerate_sources
from tasks.ingest.urls import redact
from tasks.stage import planned_processes

log = logging.getLogger("forja.ingest")

SCAN_BYTES = 16 << 20  # read at a time while looking for the cuts of a big file
PROCESS_BYTES = 32 << 20  # input per reading process at least (a fresh interpreter costs ~1.2 s)


def plan_ingest(
    sources: list[str],
    config: IngestConfig | dict[str, Any] | None = None,
    exclude: list[str | os.PathLike] | None = None,
) -> list[dict[str, Any]]:
    """Shards of input items, in a deterministic order.

    A shard holds files up to `shard_bytes` / `shard_files` (or one stretch of a bigger JSONL
    file); a URL of unknown size gets a shard of its own. Each shard is a small JSON-able dict:
    {"index", "count", "sources", "bytes", "items", "skipped", "processes"} (processes: how many
    shards `forja ingest` reads at once). Missing sources raise StageError here, before any work.
    `exclude` lists folders a folder walk skips (run_ingest passes OUT, in case it lies inside a
    source folder).
    """
    config = as_config(config)
    items, skipped = enumerate_sources(sources, config.include_hidden, exclude)
    shown = [redact(s) for s in sources]
    shards: list[dict[str, Any]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for item in (stretch for it in items for stretch in _stretches(it, config.shard_bytes)):
        n = item["size"] if item["size"] is not None else config.shard_bytes
        if current and (size + n > config.shard_bytes or len(current) >= config.shard_files):
            shards.append({"items": current, "bytes": size})
            current, size = [], 0
        current.append(item)
        size += n
    if current:
        shards.append({"items": current, "bytes": size})
    processes = reading_processes(shards, config)
    for i, shard in enumerate(shards):
        shard.update(index=i, count=len(shards), sources=shown, processes=processes)
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


def reading_processes(shards: list[dict[str, Any]], config: IngestConfig) -> int:
    """How many processes `forja ingest` reads the shards in: one per core of the stage, at most
    one per shard and per PROCESS_BYTES of input (a small ingest stays in one process)."""
    size = sum(s["bytes"] for s in shards)
    return planned_processes(config.cores(), len(shards), size, PROCESS_BYTES)


def _stretches(item: dict[str, Any], shard_bytes: int) -> list[dict[str, Any]]:
    """The item, or a big plain JSONL file's stretches (see the module's docstring)."""
    if item["kind"] != "file" or item["format"] != "jsonl" or item["compression"]:
        return [item]
    if item["size"] is None or item["size"] <= shard_bytes:
        return [item]
    t0 = time.perf_counter()
    ranges = line_ranges(item["path"], item["size"], shard_bytes)
    log.info(
        "ingest: %s (%.1f MB) is read in %d stretches, cut at line ends (%.1fs to find them)",
        item["path"],
        item["size"] / 1e6,
        len(ranges),
        time.perf_counter() - t0,
    )
    return [{**item, "size": end - start, "range": [start, end, line]} for start, end, line in ranges]


def line_ranges(
    path: str, size: int, target: int, scan_bytes: int = SCAN_BYTES
) -> list[tuple[int, int, int]]:
    """(start, end, first line) of stretches of `path` of about `target` bytes, each cut just after
    the first newline at or past `target` bytes from its start (the last one ends at `size`),
    covering the file once; the first line is 1-based. Reads `scan_bytes` at a time."""
    cuts = []  # (where a stretch starts, its first line)
    want, lines, pos = target, 0, 0  # the next cut at or after `want`; newlines before `pos`
    with open(path, "rb") as f:
        while want < size and (chunk := f.read(scan_bytes)):
            while want < size and want - pos < len(chunk):
                nl = chunk.find(b"\n", max(0, want - pos))
                if nl < 0:
                    break  # no line end in the rest of this chunk: look in the next
                cut = pos + nl + 1
                if cut < size:
                    cuts.append((cut, lines + chunk.count(b"\n", 0, nl + 1) + 1))
                want = cut + target
            lines += chunk.count(b"\n")
            pos += len(chunk)
    starts = [(0, 1), *cuts]
    ends = [cut for cut, _ in cuts] + [size]
    return [(start, end, line) for (start, line), end in zip(starts, ends, strict=True)]
