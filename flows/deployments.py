"""Deployments of the flows: served from one process by `forja serve`, or declared for a work pool
in infra/prefect.yaml (`prefect deploy --all`). Both offer the same two deployments:

- `pipeline/forja-pipeline`: run on demand from the Prefect UI, with a form for every parameter;
- `retrain/forja-retrain-nightly`: the retrain flow on a cron schedule (03:00 UTC by default), one run at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from prefect.exceptions import TerminationSignal
from prefect.runner import Runner

from flows.pipeline import pipeline
from flows.retrain import retrain

PIPELINE = "forja-pipeline"
RETRAIN = "forja-retrain-nightly"


def deployments(cron: str = "0 3 * * *", sources: list[str] | None = None) -> list:
    sources = sources or ["python-docs"]
    return [
        pipeline.to_deployment(
            name=PIPELINE,
            parameters={"sources": sources},
            description="Ingest, clean, tokenize, train, evaluate, register.",
            tags=["forja"],
        ),
        retrain.to_deployment(
            name=RETRAIN,
            cron=cron,
            parameters={"sources": sources},
            description="Retrain on new data; promote only a better model.",
            tags=["forja", "scheduled"],
            concurrency_limit=1,
        ),
    ]


def serve_all(
    cron: str = "0 3 * * *",
    sources: list[str] | None = None,
    announce: Callable[[], None] | None = None,
) -> None:
    """What `prefect.serve` does, with `announce` called once the deployments exist on the server
    (so a trigger line printed there works at once), then runs them until interrupted. Runs still
    in flight when it stops end Crashed (`end_runs_in_flight`), never RUNNING for ever."""
    runner = Runner(pause_on_shutdown=True)
    ids = [runner.add_deployment(d) for d in deployments(cron, sources)]  # registers them
    if announce is not None:
        announce()
    try:
        with contextlib.suppress(KeyboardInterrupt, TerminationSignal):  # Ctrl-C, or a stop from Prefect
            asyncio.run(runner.start())
    finally:
        end_runs_in_flight(ids)


FLOW_RUN_PROCESS = "prefect.engine"  # in the command line of a flow run the runner started
STOPPED = "forja serve was stopped while this run ran; trigger it again to resume from its checkpoint"


def end_runs_in_flight(deployment_ids: list, grace_s: float = 20.0) -> list[str]:
    """After the runner stops (Ctrl-C, SIGTERM), while the API is still up: stop the flow-run
    processes it started (SIGTERM, then SIGKILL after `grace_s`), end their MLflow runs KILLED, and
    mark Crashed every run of these deployments still RUNNING or PENDING, with its sub-flow runs and
    task runs. Returns the ids of the flow runs marked."""
    import psutil

    procs = [p for p in psutil.Process().children() if FLOW_RUN_PROCESS in " ".join(_cmdline(p))]
    for p in procs:
        p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        p.kill()
    from forja import tracking

    tracking.mark_stale_runs()  # their MLflow runs: KILLED (their processes are gone now)
    return _mark_crashed(deployment_ids)


def _cmdline(proc) -> list[str]:
    try:
        return proc.cmdline()
    except Exception:  # gone already, or not ours to read
        return []


def _mark_crashed(deployment_ids: list) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    from flows.tracked_run import crash_unfinished

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
                )
            ),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)),
        )
        return crash_unfinished(client, [r.id for r in runs], STOPPED)
