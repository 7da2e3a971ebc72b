"""Zombie flow runs: a flow run whose process or host died is marked Crashed by Prefect itself.

Every flow run a worker starts sends a heartbeat event (`prefect.flow-run.heartbeat`) every
`PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds (the stack's workers and compose's set it to
HEARTBEAT_S). The automation below, Prefect's documented one (docs: "detect zombie flows"), is a
proactive trigger: once a flow run has sent a heartbeat, if neither another heartbeat nor a final
state follows within `within` seconds, the server changes the flow run to Crashed. What the dead
process left running (its task runs, its MLflow run) is ended by
`flows.tracked_run.end_leftovers_of_ended_flow_runs`, which `guard()` runs too and every new flow
run runs at its start.

`forja stack up` calls `guard()` for the stack; with compose, run `forja stack guard` once with
`PREFECT_API_URL`, `PREFECT_API_AUTH_STRING` and `MLFLOW_TRACKING_URI` (+ user and password) set.
"""

from __future__ import annotations

from datetime import timedelta

from forja.stack.spec import CRASH_AFTER_S

AUTOMATION = "forja: crash flow runs whose heartbeats stopped"
MESSAGE = (
    "no heartbeat from this flow run's process for {within} s: its process or host is gone "
    "(marked by the automation '{name}'); trigger it again to resume from its checkpoint"
)


def automation(within_s: int):
    """The automation, as Prefect's client builds it."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    final = [f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")]
    return AutomationCore(
        name=AUTOMATION,
        description="Marks Crashed a flow run that stopped sending heartbeats (its process or host died).",
        trigger=EventTrigger(
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *final},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED, message=MESSAGE.format(within=within_s, name=AUTOMATION)
            )
        ],
    )


def ensure_automation(within_s: int = CRASH_AFTER_S) -> str:
    """Create the automation on the Prefect server of this environment, unless it is there as
    wanted (an older version of it is replaced); returns 'created', 'replaced' or 'present'."""
    from prefect.client.orchestration import get_client

    wanted = automation(within_s)
    with get_client(sync_client=True) as client:
        have = client.read_automations_by_name(AUTOMATION)
        same = [a for a in have if _core(a) == _core(wanted)]
        if same and len(have) == 1:
            return "present"
        for a in have:
            client.delete_automation(a.id)
        client.create_automation(wanted)
        # a create that the client retried (an answer too slow under load) makes two: keep one
        for a in client.read_automations_by_name(AUTOMATION)[1:]:
            client.delete_automation(a.id)
    return "replaced" if have else "created"


def _core(a) -> dict:
    return a.model_dump(
        mode="json", include={"name", "trigger", "actions", "enabled"}, exclude={"trigger": {"id"}}
    )


def guard(within_s: int = CRASH_AFTER_S) -> dict:
    """The automation in place, and what flow runs that ended from outside left running ended."""
    from flows.tracked_run import end_leftovers_of_ended_flow_runs

    return {
        "automation": ensure_automation(within_s),
        "ended_mlflow_runs": end_leftovers_of_ended_flow_runs(),
    }
