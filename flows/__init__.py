"""Prefect flows: they compose the stages of tasks/ and the training of lm/.

Importing this package changes nothing in the process: no environment variable, no Prefect setting.
The entry points configure Prefect and MLflow for the Forja home (forja/home.py): the CLI commands
call `configure()` before they import Prefect, and a flow declared with `forja_flow` configures
itself when a Prefect worker or `flow.serve` runs it without the CLI.

Why the flow carries its result storage rather than relying on the environment: Prefect reads its
settings once, when `prefect` is imported, and fixes a flow run's result storage when the run starts.
A worker imports Prefect before it imports the flow, so an environment variable set by the flow
module or the flow body comes too late: cached results would land in ~/.prefect/storage, where the
CLI's runs never look. The path is therefore resolved when the flow is declared.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forja.home import Home, configure


def results_storage() -> Path:
    """Where Forja's flows persist task and flow results: the folder `configure()` names."""
    explicit = os.environ.get("PREFECT_RESULTS_LOCAL_STORAGE_PATH")
    return Path(explicit).expanduser() if explicit else Home.from_env().prefect_home / "storage"


def _configure_on_start(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect `on_running` hook: point MLflow (and the run's subprocesses) at the Forja home; in a
    process a worker or `forja serve` started, let the run outlive its console (forja/console.py)."""
    home = configure()
    # PREFECT_LOGGING_EXTRA_LOGGERS=forja gives Forja's loggers Prefect's handlers, not a level: at
    # the root's WARNING, their INFO lines ("promoted ...", "progress updates resumed") never reached
    # the run logs of a worker's flow run.
    forja_log = logging.getLogger("forja")
    if forja_log.level == logging.NOTSET:
        forja_log.setLevel(logging.INFO)
    if os.environ.get("PREFECT__FLOW_RUN_ID"):  # set by the worker for the flow-run process
        from forja.console import survive_closed_console

        survive_closed_console(home.root / "logs" / f"console-{os.getpid()}.log")


def forja_flow(name: str) -> Callable:
    """`prefect.flow` for Forja: JSON results persisted under the Forja home, configured when run."""
    from prefect import flow  # here, not at import: `import flows` must not read Prefect's settings

    return flow(
        name=name,
        persist_result=True,
        result_serializer="json",
        result_storage=results_storage(),
        on_running=[_configure_on_start],
    )
