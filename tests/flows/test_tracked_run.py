"""flows/tracked_run.py: starting a flow's MLflow run first ends the runs whose process vanished.

A local SQLite MLflow store in a temporary Forja home; the Prefect side is recorded rather than sent
(the killed-run test of tests/reliability/test_flows.py checks it against a real Prefect server).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import mlflow
import pytest

from flows import tracked_run
from forja import tracking


@pytest.fixture
def local_store(tmp_path, monkeypatch):
    monkeypatch.setenv("FORJA_HOME", str(tmp_path))
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        yield tracking.client()
    finally:
        mlflow.set_tracking_uri(previous_uri)


def a_dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def test_start_tracked_run_kills_vanished_runs_and_crashes_their_flow_runs(local_store, monkeypatch):
    crashed: list[str] = []
    monkeypatch.setattr(tracked_run, "crash_flow_run", crashed.append)
    exp = tracking.experiment_id()
    here, dead = socket.gethostname(), str(a_dead_pid())

    def run_of(host: str, pid: str, flow_run: str | None = None) -> str:
        tags = {"forja.host": host, "forja.pid": pid} | (
            {"prefect.flow_run_id": flow_run} if flow_run else {}
        )
        return local_store.create_run(exp, tags=tags).info.run_id

    vanished = run_of(here, dead, "flow-run-of-the-vanished")
    vanished_without_flow = run_of(here, dead)
    alive = run_of(here, str(os.getpid()), "flow-run-still-alive")
    other_host = run_of(here + "-elsewhere", dead, "flow-run-on-another-host")  # its pid means nothing here

    new = tracked_run.start_tracked_run("new", {"forja.kind": "test"}, exp)

    status = {
        run: local_store.get_run(run).info.status
        for run in (vanished, vanished_without_flow, alive, other_host)
    }
    assert status == {
        vanished: "KILLED",
        vanished_without_flow: "KILLED",
        alive: "RUNNING",
        other_host: "RUNNING",
    }
    assert crashed == ["flow-run-of-the-vanished"]
    assert "process is gone" in local_store.get_run(vanished).data.tags["forja.ended_by"]
    started = local_store.get_run(new)
    assert started.info.status == "RUNNING" and started.data.tags["forja.pid"] == str(os.getpid())
    assert started.data.tags["forja.kind"] == "test"


def test_tracking_start_run_alone_leaves_other_runs_alone(local_store):
    """forja.tracking only records: the cleanup is the flow's decision (and the Prefect part its job)."""
    exp = tracking.experiment_id()
    tags = {"forja.host": socket.gethostname(), "forja.pid": str(a_dead_pid()), "prefect.flow_run_id": "f"}
    vanished = local_store.create_run(exp, tags=tags).info.run_id
    tracking.start_run("new", {}, exp)
    assert local_store.get_run(vanished).info.status == "RUNNING"
