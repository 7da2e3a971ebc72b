"""`forja stack`: the production topology started for real, a deployment run through it end to end.

The module fixture runs `forja stack up` (Postgres, Prefect server and worker, MLflow server on
Postgres with SeaweedFS S3 artifacts, a Dask scheduler and two workers) into a temporary folder and
`forja stack deploy`; the test triggers the `pipeline` deployment through the Prefect API as the UI's
Run button does, and checks where everything ran and landed; `stack down` must leave nothing behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import time

import pytest
import yaml
from support import ROOT, child_env

from forja.stack import postgres, services
from forja.stack.spec import (
    BUCKET,
    CRASH_AFTER_S,
    DATABASES,
    HEARTBEAT_S,
    PG_MAJOR,
    PG_USER,
    WORK_POOL,
    StackError,
    load,
    new_state,
    postgres_url,
)

ZOMBIE_WITHIN_S = 60  # the zombie test's automation: no heartbeat for 60 s (30 s beats); else 180
OUTAGE_S = int(os.environ.get("FORJA_TEST_OUTAGE_S", "20"))  # the API outage test's (120 by hand)
COMPOSE = yaml.safe_load((ROOT / "infra" / "compose.yaml").read_text())


def _flags(args: list[str]) -> dict[str, str]:
    return dict(a.removeprefix("--").split("=", 1) for a in args if a.startswith("--"))


def test_the_stack_and_compose_start_the_same_services(tmp_path):
    svc = COMPOSE["services"]
    assert svc["postgres"]["image"] == f"postgres:{PG_MAJOR}"
    pg_env = svc["postgres"]["environment"]
    assert pg_env["POSTGRES_USER"] == PG_USER
    assert tuple(pg_env["POSTGRES_MULTIPLE_DATABASES"].split(",")) == DATABASES
    assert f"local/{BUCKET}" in svc["minio-buckets"]["command"][0]
    # MLflow: the same arguments, the same driver and database
    compose_flags = _flags(svc["mlflow"]["command"][2:])
    state = new_state(tmp_path)
    ours = _flags(services.mlflow_server_args(postgres_url(state, "mlflow", "psycopg2"), "h", 1, "a"))
    assert set(compose_flags) == set(ours)
    for flag in ("artifacts-destination", "app-name"):
        assert compose_flags[flag] == ours[flag], flag
    scheme_db = re.compile(r"^([^:]+)://.*/(\w+)$")
    assert (
        scheme_db.match(compose_flags["backend-store-uri"]).groups()
        == scheme_db.match(ours["backend-store-uri"]).groups()
    )
    # Prefect: asyncpg on the `prefect` database; the worker polls the same process pool
    compose_db = svc["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert (
        scheme_db.match(compose_db).groups()
        == scheme_db.match(postgres_url(state, "prefect", "asyncpg")).groups()
    )
    worker = svc["worker"]["command"]
    assert worker[worker.index("--pool") + 1] == WORK_POOL and worker[worker.index("--type") + 1] == "process"
    # the "MLflow run" link of a flow run opens the MLflow server's port as published to the host
    ui = svc["worker"]["environment"]["FORJA_MLFLOW_UI_URL"]
    assert f"{ui.removeprefix('http://')}:5000" in svc["mlflow"]["ports"], (ui, svc["mlflow"]["ports"])
    # flow-run heartbeats, and the automation that crashes runs whose heartbeats stop
    assert svc["worker"]["environment"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(HEARTBEAT_S)
    assert svc["guard"]["command"][-2:] == ["stack", "guard"]
    worker_env = next(s for s in services.services(tmp_path, state, ROOT) if s.name == "prefect-worker").env
    assert worker_env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(HEARTBEAT_S)


def _binaries_or_skip():
    try:
        return postgres.find_binaries()
    except StackError as e:
        pytest.skip(f"PostgreSQL binaries with pg_trgm are not installed: {e}")


def test_postgres_binaries_are_found_with_what_prefect_needs():
    """The binaries the stack picks run, have pg_trgm, and are compose's major where one is installed."""
    found = _binaries_or_skip()
    major = postgres.major(found)
    assert postgres.has_pg_trgm(found, major)
    if any(postgres.major(c) == PG_MAJOR for c in postgres._candidates()):
        assert major == PG_MAJOR


def test_a_missing_binary_folder_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(postgres.PG_BIN_ENV, str(tmp_path))
    with pytest.raises(StackError, match=f"{postgres.PG_BIN_ENV}={tmp_path} holds no postgres"):
        postgres.find_binaries()


# ------------------------------------------------------------------------------ the stack, for real


def _forja(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "forja.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    _binaries_or_skip()
    tmp = tmp_path_factory.mktemp("stack")
    folder = tmp / "stack"
    env = child_env(FORJA_HOME=str(tmp / "home"))
    t0 = time.time()
    r = _forja("stack", "up", "--dir", str(folder), "--json", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"zombie automation created (within {CRASH_AFTER_S} s)" in r.stderr, r.stderr[-2000:]
    up_s = time.time() - t0
    client = json.loads(r.stdout)
    try:
        again = _forja("stack", "up", "--dir", str(folder), "--json", env=env)  # idempotent
        assert again.returncode == 0 and json.loads(again.stdout) == client, again.stderr[-2000:]
        assert again.stderr.count(" running (pid ") == len(services.services(folder, load(folder), ROOT))
        assert "zombie automation present" in again.stderr, again.stderr[-2000:]
        d = _forja("stack", "deploy", "--dir", str(folder), env=env)
        assert d.returncode == 0, d.stderr[-3000:]
        yield {"folder": folder, "env": env, "client": client, "tmp": tmp, "up_s": up_s}
    finally:
        state = load(folder)
        down = _forja("stack", "down", "--dir", str(folder), env=env, timeout=240)
        assert down.returncode == 0, down.stderr[-2000:]
        # nothing listening, no process left
        assert not [n for n, p in state.ports.items() if services.port_in_use(p)]
        assert not [n for n, rec in state.pids.items() if services.alive(rec)]
        assert load(folder).pids == {}


def _params(corpus, dask_address: str) -> dict:
    return {
        "sources": [str(corpus)],
        "preset": "tiny",
        "ingest": {"split": "blank_line"},
        "tokenize": {"vocab_size": 512},
        "model": {"n_layer": 2, "n_head": 2, "d_model": 64, "max_seq_len": 64},
        "train": {"max_steps": 6, "eval_every": 3, "checkpoint_every": 3, "batch_size": 8},
        "evaluate": {"max_new_tokens": 8, "max_bytes": 20000},
        "run": {"dataset": "stack", "runner": "dask", "dask_address": dask_address, "export_hf": False},
    }


async def _wait_final(flow_run_id, timeout: float):
    from prefect import get_client

    deadline = time.time() + timeout
    async with get_client() as c:
        while True:
            fr = await c.read_flow_run(flow_run_id)
            if fr.state.is_final() or time.time() > deadline:
                return fr
            await asyncio.sleep(1)


@pytest.fixture
def on_stack(stack, monkeypatch, request, shakespeare_path):
    """This test's Prefect and MLflow clients point at the stack; the corpus the runs read."""
    client = stack["client"]
    for k, v in client.items():
        monkeypatch.setenv(k, v)
    # Prefect read its settings when this session imported it, and an earlier test may have set
    # MLflow's global URI: point both at the stack explicitly, for this test only.
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    settings = temporary_settings(
        updates={
            PREFECT_API_URL: client["PREFECT_API_URL"],
            PREFECT_API_AUTH_STRING: client.get("PREFECT_API_AUTH_STRING"),
        }
    )
    import mlflow

    mlflow.set_tracking_uri(client["MLFLOW_TRACKING_URI"])
    request.addfinalizer(lambda: mlflow.set_tracking_uri(None))
    corpus = stack["tmp"] / "corpus"
    if not corpus.is_dir():
        corpus.mkdir()
        (corpus / "shakespeare.txt").write_text(shakespeare_path.read_text(encoding="utf-8")[:120_000])
    with settings:
        yield {**stack, "corpus": corpus}


@pytest.mark.slow
def test_a_deployment_triggered_like_the_ui_runs_on_the_worker_dask_mlflow_and_s3(on_stack):
    client, corpus = on_stack["client"], on_stack["corpus"]
    from distributed import Client
    from prefect.deployments import run_deployment

    # the UI's Run button: a flow run created from the deployment with custom parameters
    t0 = time.time()
    created = run_deployment(
        "pipeline/forja-pipeline", parameters=_params(corpus, client["DASK_SCHEDULER_ADDRESS"]), timeout=0
    )
    fr = asyncio.run(_wait_final(created.id, timeout=600))
    print(
        f"\ntrigger to start {(fr.start_time - fr.created).total_seconds():.1f} s; run {time.time() - t0:.1f} s"
    )
    assert fr.state.is_completed(), fr.state.message
    # it ran in a process the worker started, not here
    assert fr.work_pool_name == WORK_POOL
    host_pid = int(str(fr.infrastructure_pid).rsplit(":", 1)[-1])
    assert host_pid != os.getpid()

    # its data stages ran on the stack's Dask workers
    with Client(client["DASK_SCHEDULER_ADDRESS"], timeout=10) as dask:
        done = dask.run_on_scheduler(
            lambda dask_scheduler: sum(
                tp.state_counts["memory"] for tp in dask_scheduler.task_prefixes.values()
            )
        )
        per_worker = dask.run(lambda dask_worker: len(dask_worker.state.log))
    assert done >= 3 and len(per_worker) == 2 and all(n > 0 for n in per_worker.values()), (done, per_worker)

    # the MLflow server holds the run, made by the flow-run process
    import boto3
    import mlflow
    from mlflow import MlflowClient

    ml = MlflowClient(client["MLFLOW_TRACKING_URI"])
    runs = ml.search_runs(
        [e.experiment_id for e in ml.search_experiments()], f"tags.`prefect.flow_run_id` = '{fr.id}'"
    )
    assert len(runs) == 1, runs
    run = runs[0]
    assert int(run.data.tags["forja.pid"]) == host_pid
    assert run.data.params["preset"] == "tiny" and run.data.params["train.max_steps"] == "6"
    assert run.data.metrics, "no metrics"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri  # through the server
    assert ml.list_artifacts(run.info.run_id)

    # ... and its artifacts are objects in the bucket
    state = load(on_stack["folder"])
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{state.ports['s3']}",
        aws_access_key_id=state.credentials["s3_access_key"],
        aws_secret_access_key=state.credentials["s3_secret_key"],
        region_name="us-east-1",
    )
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
    ]
    assert any(run.info.run_id in k for k in keys), keys[:20]

    # the champion loads through the server and generates
    from forja.tracking import model_name_for

    model = mlflow.pyfunc.load_model(f"models:/{model_name_for('stack')}@champion")
    import pandas as pd

    out = model.predict(pd.DataFrame({"prompt": ["To be"]}), params={"max_new_tokens": 4, "seed": 1})
    assert len(out) == 1 and out[0].startswith("To be")


def _train_running(flow_run_id) -> bool:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    with get_client(sync_client=True) as c:
        tasks = c.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
    return any(t.name == "train" and t.state_type.value == "RUNNING" for t in tasks)


@pytest.mark.slow
def test_a_flow_run_whose_worker_and_process_die_is_crashed_by_its_missing_heartbeats(on_stack):
    """A lost host: SIGKILL of the worker and the flow-run process mid-training. The heartbeat
    automation marks the flow run Crashed; `forja stack up` restarts the worker and its guard ends
    the train task run (Crashed) and the MLflow run (KILLED)."""
    import signal

    from mlflow import MlflowClient
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter
    from prefect.deployments import run_deployment

    from forja.stack.guard import ensure_automation

    client, folder = on_stack["client"], on_stack["folder"]
    assert ensure_automation(ZOMBIE_WITHIN_S) == "replaced"  # shorter, for this test (`up` restores it)
    params = _params(on_stack["corpus"], client["DASK_SCHEDULER_ADDRESS"])
    params["train"] |= {"max_steps": 100_000, "eval_every": 0, "checkpoint_every": 100}
    created = run_deployment("pipeline/forja-pipeline", parameters=params, timeout=0)
    deadline = time.time() + 300
    while not _train_running(created.id):
        assert time.time() < deadline, "training did not start on the stack's worker"
        time.sleep(1)
    with get_client(sync_client=True) as c:
        fr = c.read_flow_run(created.id)
    flow_run_pid = int(str(fr.infrastructure_pid).rsplit(":", 1)[-1])
    worker_pid = int(load(folder).pids["prefect-worker"][0])
    for pid in (worker_pid, flow_run_pid):
        os.kill(pid, signal.SIGKILL)
    killed = time.time()

    fr = asyncio.run(_wait_final(created.id, timeout=ZOMBIE_WITHIN_S + 90))
    crashed_s = time.time() - killed
    print(f"\ncrashed {crashed_s:.0f} s after the kill (automation within {ZOMBIE_WITHIN_S} s)")
    assert fr.state.is_crashed(), fr.state
    assert "no heartbeat" in fr.state.message
    ml = MlflowClient(client["MLFLOW_TRACKING_URI"])
    exps = [e.experiment_id for e in ml.search_experiments()]
    [run] = ml.search_runs(exps, f"tags.`prefect.flow_run_id` = '{fr.id}'")
    assert run.info.status == "RUNNING"  # nothing has ended it yet: its process died

    r = _forja("stack", "up", "--dir", str(folder), "--json", env=on_stack["env"])  # the worker back
    assert r.returncode == 0, r.stderr[-2000:]
    assert (
        "prefect-worker  ready" in r.stderr and "1 MLflow run(s) of ended flow runs ended KILLED" in r.stderr
    )
    run = ml.get_run(run.info.run_id)
    assert run.info.status == "KILLED" and "ended Crashed" in run.data.tags["forja.ended_by"]
    with get_client(sync_client=True) as c:
        tasks = c.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [fr.id]}))
    assert {t.name: t.state_type.value for t in tasks}["train"] == "CRASHED"
    assert not [t.name for t in tasks if t.state_type.value in ("RUNNING", "PENDING")]


@pytest.mark.slow
def test_a_prefect_api_outage_during_training_costs_progress_updates_not_the_run(on_stack):
    """The Prefect server stops mid-training and comes back OUTAGE_S seconds later (plus its
    restart); training goes on without it and the run completes. FORJA_TEST_OUTAGE_S=120 runs the
    2-minute outage of the issue by hand."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.deployments import run_deployment

    client, folder = on_stack["client"], on_stack["folder"]
    params = _params(on_stack["corpus"], client["DASK_SCHEDULER_ADDRESS"])
    # training that outlasts the outage and the server's restart (about 45 s), then stops by itself;
    # progress updates every 10 s meanwhile; no registration (the end-to-end test has one)
    params["train"] |= {"max_steps": 1_000_000, "eval_every": 0, "checkpoint_every": 0}
    params["train"]["max_time_s"] = OUTAGE_S + 75
    params["run"]["register_model"] = False
    created = run_deployment("pipeline/forja-pipeline", parameters=params, timeout=0)
    deadline = time.time() + 300
    while not _train_running(created.id):
        assert time.time() < deadline, "training did not start on the stack's worker"
        time.sleep(1)
    server = load(folder).pids["prefect-server"]
    t0 = time.time()
    services.stop(server)
    time.sleep(OUTAGE_S)
    r = _forja("stack", "up", "--dir", str(folder), "--json", env=on_stack["env"])
    assert r.returncode == 0, r.stderr[-2000:]
    print(f"\nPrefect API down for {time.time() - t0:.0f} s ({OUTAGE_S} s + restart)")
    fr = asyncio.run(_wait_final(created.id, timeout=600))
    assert fr.state.is_completed(), fr.state
    with get_client(sync_client=True) as c:
        logs = c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[fr.id])))
    text = "\n".join(entry.message for entry in logs)
    # Prefect's client retries a call for about half a minute: a short outage may cost no update at
    # all; one that outlasts the retries costs one warning, and a line when updates resume.
    assert ("progress updates paused" in text) <= ("progress updates resumed" in text), text[-3000:]
    # Forja's own INFO lines are in the run's Prefect logs
    assert any(e.name.startswith("forja") and e.level == logging.INFO for e in logs), {e.name for e in logs}


def test_stack_status_and_env_of_a_folder_without_a_stack_say_how_to_start_one(tmp_path):
    env = child_env(FORJA_HOME=str(tmp_path / "home"))
    r = _forja("stack", "status", "--dir", str(tmp_path / "none"), env=env, timeout=120)
    assert r.returncode == 2 and "forja stack up --dir" in r.stderr and "Traceback" not in r.stderr


def test_up_refuses_a_busy_port_in_one_line(tmp_path):
    """A port chosen at the first `up` and taken since: one error naming the port and the fix."""
    import socket

    from forja.home import Home

    folder = tmp_path / "stack"
    folder.mkdir()
    state = new_state(Home(tmp_path / "home").root)
    state.postgres_bin = str(_binaries_or_skip())
    with socket.socket() as s:
        s.bind(("127.0.0.1", state.ports["postgres"]))
        s.listen()
        state.save(folder)
        r = _forja(
            "stack", "up", "--dir", str(folder), env=child_env(FORJA_HOME=str(tmp_path / "home")), timeout=120
        )
    assert r.returncode == 2, r.stderr
    assert f"port {state.ports['postgres']} (postgres) is in use" in r.stderr and "Traceback" not in r.stderr
    assert not (folder / "postgres" / "postmaster.pid").exists()
