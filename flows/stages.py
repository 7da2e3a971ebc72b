"""The stages as Prefect tasks: the same `Stage` runner as the CLI, its shards mapped over the flow's
task runner (threads, or a Dask cluster).

For each stage a flow run makes three kinds of task run:

    <stage>-plan          the shards (for tokenize: trains the tokenizer first)
    <stage>-shard-<n>     one per shard, mapped
    <stage>               writes the output and publishes it (manifest last); cached by the
                          stage's key, so an unchanged stage shows as Cached and nothing of it runs

The key is the one `forja <stage>` computes (tasks/stage.py): the same inputs give the same key,
the same digest and the same manifest on both paths. A flow keeps each stage's output in
FORJA_HOME/data/<dataset>/<stage>/<key[:16]> (ingest: FORJA_HOME/data/<dataset>/ingest, which grows
incrementally). Task arguments and results are small JSON-able dicts and paths: they travel to Dask
workers and into Prefect's result store as JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task, unmapped
from prefect.results import get_default_result_storage, get_result_store
from prefect.tasks import exponential_backoff

from tasks.common import interrupts_kept
from tasks.ingest import SourceUnavailable
from tasks.stage import StageRun, get_stage

TASK_OPTS = {"persist_result": True, "result_serializer": "json"}


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


def summary(manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    keep = (
        "stage",
        "key",
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


# Not persisted: ingest's plan holds the sources' URLs as given, credentials included (docs/security.md).
@task(name="plan", task_run_name="{stage_name}-plan", persist_result=False, **IO_RETRIES)
def plan_task(stage_name: str, spec: dict[str, Any]) -> list[dict[str, Any]]:
    with interrupts_kept():
        return get_stage(stage_name).plan(StageRun.from_spec(spec))


@task(name="shard", task_run_name="{stage_name}-shard-{index}", **IO_RETRIES)
def shard_task(
    stage_name: str, shard: dict[str, Any], work: str, config: dict[str, Any], index: int
) -> dict[str, Any]:
    with interrupts_kept():
        return get_stage(stage_name).run_shard(shard, work, config)


@task(name="publish", task_run_name="{stage_name}", cache_key_fn=by_key, **TASK_OPTS)
def publish_task(
    stage_name: str, spec: dict[str, Any], results: list[dict[str, Any]] | None, key: str
) -> dict[str, Any]:
    """Write and publish the stage's output from the shard results; `results=None`: the output is
    already there with this key (only reached when Prefect's cache has no record of it)."""
    run = StageRun.from_spec(spec)
    if results is None and (m := run.reuse()) is not None:
        return summary({**m, "changed": False}, run.out)
    with interrupts_kept():  # Ctrl-C in a DuckDB query: the task ends Crashed, not Failed
        return summary(run.finish(results or []), run.out)


def run_stage_in_flow(
    stage_name: str, inputs: Any, out: Path | Any, config: dict[str, Any], fresh: bool
) -> dict[str, Any]:
    """One stage inside a flow: Cached when its output is there with the same key, else plan ->
    shards (mapped) -> publish. `out` may be a function of the key."""
    stage = get_stage(stage_name)
    run = stage.prepare(inputs, out, config)
    if not fresh and run.reuse() is not None:
        cached = publish_task(stage_name, run.spec(), None, key=run.key)
        return {**cached, "changed": False}
    run.begin()
    try:
        spec = run.spec()
        shards = plan_task(stage_name, spec)
        futures = shard_task.map(
            unmapped(stage_name),
            shards,
            unmapped(str(run.staging / "work")),
            unmapped(spec["config"]),
            index=list(range(len(shards))),
        )
        results = [f.result() for f in futures]
        return publish_task.with_options(refresh_cache=True)(stage_name, spec, results, key=run.key)
    except BaseException:
        run.abort()
        raise


def run_ingest_stage(sources: list[str], out: Path, config: dict[str, Any], fresh: bool) -> dict[str, Any]:
    return run_stage_in_flow("ingest", list(sources), out, config, fresh)


def run_clean_stage(
    ingest_dir: Path, dataset_dir: Path, config: dict[str, Any], fresh: bool
) -> dict[str, Any]:
    return run_stage_in_flow("clean", ingest_dir, lambda key: dataset_dir / "clean" / key[:16], config, fresh)


def run_tokenize_stage(
    clean_dir: Path, dataset_dir: Path, config: dict[str, Any], fresh: bool
) -> dict[str, Any]:
    return run_stage_in_flow(
        "tokenize", clean_dir, lambda key: dataset_dir / "tokens" / key[:16], config, fresh
    )


def duplicate_metrics(clean: dict[str, Any]) -> dict[str, float]:
    """`data.duplicates.<where>`: the duplicates ingest and clean removed, one account (the clean
    report's), so that a run's totals add up across the stages."""
    account = (clean.get("counts") or {}).get("duplicates") or {}
    return {f"data.duplicates.{k}": float(v) for k, v in account.items()}
