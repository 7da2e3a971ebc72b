"""`forja ui`: the Prefect server and the MLflow UI over the Forja home, on 127.0.0.1 by default.

Both servers read the same stores the embedded defaults write (FORJA_HOME/prefect/prefect.db and
FORJA_HOME/mlflow.db), so runs made before, and runs made while it runs, all appear. While it runs
it leaves FORJA_HOME/ui.json with its URLs; `forja run` and `forja serve` then talk to this Prefect
server instead of starting a temporary one.

Binding to anything but loopback turns authentication on: Prefect's API auth string
(PREFECT_SERVER_API_AUTH_STRING) and MLflow's basic-auth app with an allow-list of hosts. The
credentials are generated once into FORJA_HOME/ui-auth.json (mode 600) unless given.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from forja.home import UI_STATE, Home
from forja.stack.spec import MLFLOW_AUTH_CACHE_TTL_S
from lm.errors import ForjaError
from lm.fileio import atomic_write_json

AUTH_FILE = "ui-auth.json"


class UIError(ForjaError):
    pass


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServerSpec:
    """One server to start: its command, extra environment, URL and health URL."""

    name: str
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    url: str = ""
    health: str = ""


def load_or_make_auth(home: Home, auth_file: Path | None = None) -> dict[str, str]:
    path = auth_file or home.root / AUTH_FILE
    if path.is_file():
        return json.loads(path.read_text())
    auth = {"user": "admin", "password": secrets.token_urlsafe(24), "secret_key": secrets.token_urlsafe(32)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(auth, f)
    return auth


def server_specs(
    home: Home,
    host: str = "127.0.0.1",
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    auth: dict[str, str] | None = None,
    public_names: list[str] | None = None,
) -> list[ServerSpec]:
    """The commands and settings of both servers (a test checks them: loopback by default, auth otherwise).

    Authentication is on when `host` is not loopback (then `auth` is required) or when `auth` is given.
    """
    remote = not is_loopback(host) or auth is not None
    if remote and auth is None:
        raise UIError(
            f"binding to {host} exposes the servers: authentication is required (see docs/security.md)"
        )
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    # What a browser elsewhere uses to reach the Prefect API (the UI calls it from the browser).
    public = (public_names or [shown])[0]
    prefect_env = {
        "PREFECT_HOME": str(home.prefect_home),
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(prefect_port),
        "PREFECT_UI_API_URL": f"http://{public}:{prefect_port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    mlflow_cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        home.default_tracking_uri,
        # Artifacts logged through this server land where local runs put theirs, not in its cwd.
        "--artifacts-destination",
        str(home.mlflow_artifacts),
        "--host",
        host,
        "--port",
        str(mlflow_port),
        "--workers",
        "1",
    ]
    # MLflow 3's job runner (huey consumers in sessions of their own) serves features Forja does not
    # use, and would outlive a stopped server.
    mlflow_env: dict[str, str] = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if remote:
        prefect_env["PREFECT_SERVER_API_AUTH_STRING"] = f"{auth['user']}:{auth['password']}"
        names = sorted({shown, "localhost", "127.0.0.1", *(public_names or [])})
        allowed = ",".join(sorted({n for name in names for n in (name, f"{name}:{mlflow_port}")}))
        ini = home.root / "mlflow-basic-auth.ini"
        ini.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{home.root / 'mlflow-auth.db'}\n"
            f"admin_username = {auth['user']}\nadmin_password = {auth['password']}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # the stack's credential cache: MLflow checks the password's slow hash on every
            # request otherwise (forja/stack/spec.py)
            f"auth_cache_ttl_seconds = {MLFLOW_AUTH_CACHE_TTL_S}\n"
        )
        os.chmod(ini, 0o600)
        mlflow_cmd += ["--app-name", "basic-auth", "--allowed-hosts", allowed]
        mlflow_env |= {
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": auth["secret_key"],
        }
    return [
        ServerSpec(
            "prefect",
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                host,
                "--port",
                str(prefect_port),
                "--analytics-off",
            ],
            prefect_env,
            f"http://{shown}:{prefect_port}",
            f"http://{shown}:{prefect_port}/api/health",
        ),
        ServerSpec(
            "mlflow",
            mlflow_cmd,
            mlflow_env,
            f"http://{shown}:{mlflow_port}",
            f"http://{shown}:{mlflow_port}/health",
        ),
    ]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0, auth: dict | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise UIError(
                f"{proc.args[2:5]} exited with code {proc.returncode} before it was up; see its log"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise UIError(f"{url} did not answer within {timeout:.0f}s")


def start(specs: list[ServerSpec], log_dir: Path) -> list[subprocess.Popen]:
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for spec in specs:
        logf = open(log_dir / f"{spec.name}.log", "ab")  # noqa: SIM115 (lives as long as the server)
        procs.append(
            subprocess.Popen(
                spec.cmd,
                env={**os.environ, **spec.env},
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    try:
        for spec, proc in zip(specs, procs, strict=True):
            wait_healthy(spec.health, proc)
    except BaseException:
        stop(procs)
        raise
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def write_state(home: Home, specs: list[ServerSpec]) -> Path:
    by = {s.name: s for s in specs}
    state = {
        "pid": os.getpid(),
        "prefect_api_url": by["prefect"].url + "/api",
        "prefect_ui_url": by["prefect"].url,
        "mlflow_ui_url": by["mlflow"].url,
        "mlflow_tracking_uri": home.default_tracking_uri,
    }
    atomic_write_json(home.root / UI_STATE, state)
    return home.root / UI_STATE


def clear_state(home: Home) -> None:
    (home.root / UI_STATE).unlink(missing_ok=True)
