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
    (so a trigger line printed there works at once), then runs them until interrupted."""
    runner = Runner(pause_on_shutdown=True)
    for deployment in deployments(cron, sources):
        runner.add_deployment(deployment)  # registers it with the API
    if announce is not None:
        announce()
    with contextlib.suppress(KeyboardInterrupt, TerminationSignal):  # Ctrl-C, or a stop from Prefect
        asyncio.run(runner.start())
