"""The report card at the end of a pipeline run (forja/report.py says what it holds).

`publish_report` records the machine, logs report.md and report.html to the MLflow run, puts the
card on the registered model version as its description, and shows it in Prefect as the markdown
artifact `report-card`. The model is trained and registered by then: a card that cannot be made
costs a warning, not the run.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.artifacts import create_markdown_artifact

from forja.report_run import portable, publish

log = logging.getLogger("forja.report")


def publish_report(params: Any, run_id: str, registered: dict[str, Any] | None) -> str | None:
    """The run's card, published (MLflow artifacts, model version description, Prefect artifact)."""
    try:
        md = publish(run_id, params.report, registered)
    except Exception as e:
        log.warning("no report card for run %s: %s: %s", run_id, type(e).__name__, e)
        return None
    create_markdown_artifact(
        key="report-card", markdown=portable(md), description=f"Report card of MLflow run {run_id}"
    )
    return md
