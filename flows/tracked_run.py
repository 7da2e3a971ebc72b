"""The MLflow run of a flow run, started after cleaning up after runs whose process vanished.

A process killed outright (SIGKILL, out of memory, power loss) leaves its MLflow run RUNNING and its
Prefect flow run Running, and nothing else would ever end them. `forja.tracking.mark_stale_runs` ends
the MLflow side; the Prefect side is here, because only the flows change Prefect state.
"""

from __future__ import annotations

import logging

from forja import tracking

log = logging.getLogger("forja.tracked_run")


def crash_flow_run(flow_run_id: str) -> None:
    """Mark Crashed the Prefect flow run of a process that vanished, unless it already ended."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.states import Crashed

        with get_client(sync_client=True) as pc:
            state = pc.read_flow_run(flow_run_id).state
            if state is not None and not state.is_final():
                message = "its process is gone (found by forja's stale-run cleanup)"
                pc.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
    except Exception as e:  # no Prefect API here, or the run is gone: the MLflow side is done
        log.warning("could not mark Prefect flow run %s crashed: %s", flow_run_id, e)


def start_tracked_run(run_name: str, tags: dict[str, str], exp_id: str | None = None) -> str:
    """End the runs of vanished processes (MLflow KILLED, Prefect Crashed), then start this one's."""
    exp_id = exp_id or tracking.experiment_id()
    for stale in tracking.mark_stale_runs(exp_id):
        if stale.flow_run_id:
            crash_flow_run(stale.flow_run_id)
    return tracking.start_run(run_name, tags, exp_id)
