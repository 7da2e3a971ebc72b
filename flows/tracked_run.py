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
    """End the runs of vanished processes (MLflow KILLED, Prefect Crashed) and what ended flow runs
    left running, then start this one's."""
    exp_id = exp_id or tracking.experiment_id()
    for stale in tracking.mark_stale_runs(exp_id):
        if stale.flow_run_id:
            crash_flow_run(stale.flow_run_id)
    try:
        end_leftovers_of_ended_flow_runs()
    except Exception as e:  # no Prefect API here: this run goes on, a later one tidies up
        log.warning("could not look for runs that ended without their process: %s", e)
    return tracking.start_run(run_name, tags, exp_id)


def crash_unfinished(client, flow_run_ids: list, message: str, *, flow_runs_too: bool = True) -> list[str]:
    """Mark Crashed the given flow runs (unless `flow_runs_too` is off) and, below them, every task
    run and sub-flow run still RUNNING or PENDING; returns the ids of the flow runs marked."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        FlowRunFilterState,
        FlowRunFilterStateType,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    unfinished = [StateType.RUNNING, StateType.PENDING]
    marked: list[str] = []
    ids, first = list(flow_run_ids), True
    while ids:
        if flow_runs_too or not first:
            for run_id in ids:
                client.set_flow_run_state(run_id, Crashed(message=message), force=True)
                marked.append(str(run_id))
        first = False
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": ids}),
            task_run_filter=TaskRunFilter(
                state=TaskRunFilterState(type=TaskRunFilterStateType(any_=unfinished))
            ),
        )
        for t in tasks:
            client.set_task_run_state(t.id, Crashed(message=message), force=True)
        ids = [
            r.id
            for r in client.read_flow_runs(  # their sub-flow runs (prepare-data), and theirs
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=ids),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=unfinished)),
                )
            )
        ]
    return marked


def end_leftovers_of_ended_flow_runs() -> list[str]:
    """End what a flow run that ended without its process left behind: its MLflow run, still
    RUNNING, ends KILLED, and its task runs and sub-flow runs still RUNNING or PENDING end Crashed.

    Such a flow run was ended from outside: Crashed by the heartbeat automation (its process or host
    died; see forja/stack/guard.py), or cancelled or crashed by its worker. This looks the flow run up
    by the MLflow run's tag, whatever host or process id the run had, so a recreated container or a
    reused process id hides nothing. Called by every new flow run (`start_tracked_run`) and by
    `forja stack guard` (which `forja stack up` runs). Returns the MLflow run ids it ended.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import get_current_settings

    c, ended = tracking.client(), []
    exp_ids = [e.experiment_id for e in c.search_experiments()]
    runs = c.search_runs(exp_ids, "attributes.status = 'RUNNING'", max_results=500) if exp_ids else []
    flow_runs = {r.info.run_id: _uuid(r.data.tags.get("prefect.flow_run_id", "")) for r in runs}
    if not any(flow_runs.values()) or not get_current_settings().api.url:
        return []  # nothing to look up, or no Prefect server to ask (never a temporary one for this)
    with get_client(sync_client=True) as pc:
        for run in runs:
            flow_run_id = flow_runs[run.info.run_id]
            if not flow_run_id:
                continue
            try:
                state = pc.read_flow_run(flow_run_id).state
            except ObjectNotFound:
                continue
            if state is None or not state.is_final():
                continue
            why = f"its Prefect flow run {flow_run_id} ended {state.name} while it ran"
            crash_unfinished(pc, [flow_run_id], why, flow_runs_too=False)
            c.set_tag(run.info.run_id, "forja.ended_by", why)
            c.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
            log.warning("marked MLflow run %s KILLED: %s", run.info.run_id, why)
    return ended


def _uuid(text: str) -> str | None:
    import uuid

    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None
