"""The MLflow run of one flow run: started with its tags, linked from the Prefect UI, sampled for
system metrics while it lasts, and ended FINISHED or FAILED however the flow ends."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.artifacts import create_link_artifact

from flows.params import PipelineParams
from flows.tracked_run import start_tracked_run
from forja import tracking
from forja.home import Home

log = logging.getLogger("forja.pipeline")


@contextmanager
def tracked_run(params: PipelineParams, kind: str, extra_tags: dict[str, str] | None) -> Iterator[str]:
    """The flow run's MLflow run, from start to end: tagged, linked from Prefect, with system metrics.

    Yields the MLflow run id; ends the run FINISHED when the body returns, KILLED when it is
    interrupted (Ctrl-C, SIGTERM) and FAILED when it raises.
    """
    from prefect.runtime import flow_run

    exp_id = tracking.experiment_id()
    tags = {
        "preset": params.preset,
        "dataset": params.run.dataset,
        "forja.kind": kind,
        "prefect.flow_run_id": str(flow_run.id or ""),
        "prefect.flow_run_url": str(flow_run.ui_url or ""),
        **(extra_tags or {}),
    }
    run_id = start_tracked_run(flow_run.name or kind, tags, exp_id)
    monitor = _system_metrics(run_id)
    status = "FINISHED"
    try:
        create_link_artifact(
            key="mlflow-run",
            link=_mlflow_ui_url(exp_id, run_id),
            link_text="MLflow run",
            description="This flow run's MLflow run",
        )
        yield run_id
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        _finish(monitor)
        tracking.end_run(run_id, status)


def _mlflow_ui_url(exp_id: str, run_id: str) -> str:
    ui = Home.from_env().ui_state() or {}
    base = (
        ui.get("mlflow_ui_url") or os.environ.get("FORJA_MLFLOW_UI_URL") or tracking.mlflow.get_tracking_uri()
    )
    if not base.startswith("http"):
        base = "http://127.0.0.1:5000"  # where `forja ui` serves this store
    return f"{base.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}"


def _finish(monitor) -> None:
    """Stop sampling, and log the samples of the last, unfinished interval: MLflow's monitor drops
    them, so a run shorter than one interval had no system metrics at all. Before the run ends: an
    ended run takes no more metrics."""
    if monitor is None:
        return
    try:
        monitor.finish()
        last = monitor.aggregate_metrics()
        if last:
            monitor.publish_metrics(last)
            monitor.mlflow_logger.flush()
    except Exception as e:  # the run goes on without them
        log.warning("the last system metrics were not logged: %s", e)


def _system_metrics(run_id: str):
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=5, samples_before_logging=1)
        monitor.start()
        return monitor
    except Exception as e:  # psutil missing, say: the run goes on without system metrics
        log.warning("system metrics are off: %s", e)
        return None
