"""The data stages as Prefect tasks, mapped over shards by the flow's task runner.

Each stage has a content key: sha256 of its upstream digest (for ingest: a fingerprint of the
sources), its config and its code. The key names the stage's output folder and keys the cached
result of its last task, so an unchanged stage shows as Cached and nothing of it runs, in any later
flow run. When the cache or the output folder is missing, every task of the stage runs again, and
writes the same bytes (the stages are deterministic).

Task arguments and results are small JSON-able dicts and paths: they travel to Dask workers and
into Prefect's result store as JSON.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from prefect import task, unmapped
from prefect.results import get_default_result_storage, get_result_store
from prefect.tasks import exponential_backoff

from lm.fileio import TMP_PREFIX, sha256_file, sha256_json
from tasks import clean as clean_mod
from tasks import ingest as ingest_mod
from tasks import tokenize as tokenize_mod
from tasks.common import read_manifest
from tasks.ingest import SourceUnavailable

TASK_OPTS = {"persist_result": True, "result_serializer": "json"}


@functools.cache
def code_digest(*names: str) -> str:
    """sha256 of the source of some modules (`tasks.clean`), packages (`lm`) or data folders of a
    package (`tasks.sql`): the 'its code' part of a cache key, so editing a stage re-runs it."""
    h = hashlib.sha256()
    for name in names:
        mod = importlib.import_module(name)
        if getattr(mod, "__file__", None) is None:  # a folder without __init__.py (tasks/sql)
            folder = Path(next(iter(mod.__path__)))
            files = sorted(p for p in folder.iterdir() if p.is_file())
        elif Path(mod.__file__).name == "__init__.py":
            files = sorted(Path(mod.__file__).parent.rglob("*.py"))
        else:
            files = [Path(mod.__file__)]
        for p in files:
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def stage_key(stage: str, *parts: Any) -> str:
    return sha256_json([stage, *parts])


def by_key(context, parameters: dict[str, Any]) -> str:
    """cache_key_fn: the `key` argument the flow computed (content, config, code)."""
    return parameters["key"]


def is_cached(key: str) -> bool:
    """Whether a task result is stored under `key` (ResultStore.exists misses records in 3.9)."""
    store = get_result_store()
    storage = store.result_storage or get_default_result_storage(_sync=True)
    try:
        return storage.read_path(key) is not None
    except Exception:
        return False


def complete(folder: Path, stage: str | None = None) -> bool:
    try:
        read_manifest(folder, stage)
        return True
    except Exception:
        return False


LEFTOVER = re.compile(r"^" + re.escape(TMP_PREFIX) + r".+\.(?:work-)?(\d+)-\d+$")


def remove_dead_leftovers(folder: Path) -> list[Path]:
    """Delete the work folders that flow runs of dead processes left in `folder` (a killed run).

    Their names carry the pid of the process that made them; a live process's folder (a concurrent
    run on the same data) is left alone."""
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = LEFTOVER.match(p.name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def summary(manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    keep = (
        "stage",
        "digest",
        "counts",
        "upstream",
        "changed",
        "run",
        "splits",
        "tokenizer_sha256",
        "vocab_size",
    )
    return {"out": str(out), **{k: manifest[k] for k in keep if k in manifest}}


def retry_if_unavailable(task, task_run, state) -> bool:
    """Retry only what may pass: a source that could not be reached (network, 5xx), not a bad input."""
    try:
        state.result()
    except SourceUnavailable:
        return True
    except Exception:
        return False
    return False


IO_RETRIES = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_if_unavailable,
}


# ------------------------------------------------------------------ ingest


def fingerprint(shards: list[dict[str, Any]]) -> str:
    """Identity of what the sources hold now: every item's path, size and modification time."""
    rows = []
    for shard in shards:
        for item in shard["items"]:
            row = [item.get("kind"), item.get("path"), item.get("size")]
            path = item.get("path")
            if item.get("kind") != "url" and path and os.path.exists(path):
                row.append(os.stat(path).st_mtime_ns)
            rows.append(row)
    return sha256_json(rows)


# Not persisted: the plan holds the sources' URLs as given, credentials included (docs/security.md).
@task(name="plan-ingest", persist_result=False, **IO_RETRIES)
def plan_ingest_task(sources: list[str], config: dict[str, Any]) -> dict[str, Any]:
    shards = ingest_mod.plan_ingest(sources, config)
    return {"shards": shards, "fingerprint": fingerprint(shards)}


@task(name="ingest-shard", task_run_name="ingest-shard-{shard[index]}", **IO_RETRIES)
def ingest_shard_task(shard: dict[str, Any], out: str, config: dict[str, Any], run_id: str) -> dict[str, Any]:
    return ingest_mod.ingest_shard(shard, out, config, run_id)


@task(name="ingest", cache_key_fn=by_key, **TASK_OPTS)
def ingest_commit_task(
    out: str, results: list[dict[str, Any]], config: dict[str, Any], key: str
) -> dict[str, Any]:
    m = ingest_mod.commit_ingest(out, results, config)
    return summary(m, Path(out))


def run_ingest_stage(sources: list[str], out: Path, config: dict[str, Any], fresh: bool) -> dict[str, Any]:
    plan = plan_ingest_task(sources, config)
    key = stage_key(
        "ingest",
        plan["fingerprint"],
        sources,
        config,
        code_digest("tasks.ingest", "tasks.common"),
        str(out),
    )
    if fresh or not is_cached(key) or not complete(out, "ingest"):
        run_id = ingest_mod.new_run_id()
        futures = ingest_shard_task.map(
            plan["shards"], unmapped(str(out)), unmapped(config), unmapped(run_id)
        )
        results = [f.result() for f in futures]
        return ingest_commit_task.with_options(refresh_cache=True)(str(out), results, config, key=key)
    cached = ingest_commit_task(str(out), [], config, key=key)  # Cached: the sources have not changed
    return {**cached, "changed": False}


# ------------------------------------------------------------------ clean


@task(name="clean-plan")
def clean_plan_task(in_dir: str, config: dict[str, Any]) -> list[str]:
    return [str(p) for p in clean_mod.input_parts(in_dir, config)]


@task(name="clean-shard", task_run_name="clean-{part_name}")
def clean_shard_task(part: str, work: str, config: dict[str, Any], part_name: str = "") -> dict[str, Any]:
    return clean_mod.clean_shard(part, work, config)


@task(name="clean-dedup")
def clean_dedup_task(results: list[dict[str, Any]], work: str, config: dict[str, Any]) -> dict[str, Any]:
    return clean_mod.dedup_shards(results, work, config)


@task(name="clean", cache_key_fn=by_key, **TASK_OPTS)
def clean_finalize_task(
    results: list[dict[str, Any]],
    dedup: dict[str, Any] | None,
    out: str,
    config: dict[str, Any],
    upstream: str,
    work: str | None,
    key: str,
) -> dict[str, Any]:
    out_p = Path(out)
    if not complete(out_p, "clean"):  # (a concurrent run may have finished it meanwhile)
        clean_mod.finalize(results, dedup, out_p, config, upstream=upstream, work_dir=work)
    if work:
        shutil.rmtree(work, ignore_errors=True)
    return summary(read_manifest(out_p, "clean"), out_p)


def run_clean_stage(
    ingest_dir: Path, dataset_dir: Path, config: dict[str, Any], fresh: bool
) -> dict[str, Any]:
    upstream = read_manifest(ingest_dir, "ingest")["digest"]
    key = stage_key("clean", upstream, config, code_digest("tasks.clean", "tasks.sql", "tasks.common"))
    out = dataset_dir / "clean" / key[:16]
    remove_dead_leftovers(out.parent)
    if fresh or not is_cached(key) or not complete(out, "clean"):
        if fresh and out.exists():
            shutil.rmtree(out)
        work = out.parent / f"{TMP_PREFIX}{out.name}.work-{os.getpid()}-{time.monotonic_ns()}"
        parts = clean_plan_task(str(ingest_dir), config)
        futures = clean_shard_task.map(
            parts, unmapped(str(work)), unmapped(config), part_name=[Path(p).stem for p in parts]
        )
        results = [f.result() for f in futures]
        dedup = clean_dedup_task(results, str(work), config)
        return clean_finalize_task.with_options(refresh_cache=True)(
            results, dedup, str(out), config, upstream, str(work), key=key
        )
    return clean_finalize_task([], None, str(out), config, upstream, None, key=key)


# ------------------------------------------------------------------ tokenize


@task(name="train-tokenizer")
def train_tokenizer_task(in_dir: str, staging: str, config: dict[str, Any]) -> dict[str, Any]:
    cfg = tokenize_mod.TokenizeConfig.model_validate(config)
    if cfg.tokenizer is not None:
        return tokenize_mod.reuse_tokenizer(cfg.tokenizer, staging)
    return tokenize_mod.train_tokenizer(in_dir, staging, cfg)


@task(name="encode-part", task_run_name="encode-{part_name}")
def encode_part_task(
    part: str, tokenizer_path: str, work: str, config: dict[str, Any], part_name: str = ""
) -> dict[str, Any]:
    return tokenize_mod.encode_part(
        part, tokenizer_path, work, tokenize_mod.TokenizeConfig.model_validate(config)
    )


@task(name="tokenize", cache_key_fn=by_key, **TASK_OPTS)
def tokenize_finalize_task(
    in_dir: str,
    staging: str | None,
    tokenizer: dict[str, Any] | None,
    parts: list[dict[str, Any]],
    config: dict[str, Any],
    out: str,
    key: str,
) -> dict[str, Any]:
    out_p = Path(out)
    if staging and not complete(out_p, "tokenize"):
        tokenize_mod.finalize(
            in_dir, staging, tokenizer, parts, tokenize_mod.TokenizeConfig.model_validate(config)
        )
        shutil.rmtree(Path(staging) / "work", ignore_errors=True)
        try:
            os.rename(staging, out_p)
        except OSError:  # a concurrent run published the same content first
            if not complete(out_p, "tokenize"):
                raise
    if staging:
        shutil.rmtree(staging, ignore_errors=True)
    return summary(read_manifest(out_p, "tokenize"), out_p)


def run_tokenize_stage(
    clean_dir: Path, dataset_dir: Path, config: dict[str, Any], fresh: bool
) -> dict[str, Any]:
    upstream = read_manifest(clean_dir, "clean")["digest"]
    tok = config.get("tokenizer")
    tok_digest = sha256_file(tok) if tok else None
    key = stage_key("tokenize", upstream, config, tok_digest, code_digest("tasks.tokenize", "tasks.common"))
    out = dataset_dir / "tokens" / key[:16]
    remove_dead_leftovers(out.parent)
    if fresh or not is_cached(key) or not complete(out, "tokenize"):
        if out.exists() and (fresh or not complete(out, "tokenize")):
            shutil.rmtree(out)
        staging = out.parent / f"{TMP_PREFIX}{out.name}.{os.getpid()}-{time.monotonic_ns()}"
        staging.mkdir(parents=True)
        tokenizer = train_tokenizer_task(str(clean_dir), str(staging), config)
        parts = [str(p) for p in tokenize_mod.list_parts(clean_dir)]
        futures = encode_part_task.map(
            parts,
            unmapped(tokenizer["path"]),
            unmapped(str(staging / "work")),
            unmapped(config),
            part_name=[Path(p).stem for p in parts],
        )
        encoded = [f.result() for f in futures]
        return tokenize_finalize_task.with_options(refresh_cache=True)(
            str(clean_dir), str(staging), tokenizer, encoded, config, str(out), key=key
        )
    return tokenize_finalize_task(str(clean_dir), None, None, [], config, str(out), key=key)
