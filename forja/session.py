"""What a `forja run` / `forja retrain` session needs around its flow: a Prefect API, and interrupts
that stop the run cleanly.

Without a Prefect server (`PREFECT_API_URL` unset), a flow needs a temporary one. Prefect's own
starts in the terminal's process group, so Ctrl-C (SIGINT to the whole foreground group) killed it
with the run, and the dying run then spent minutes retrying a server that was gone, printing
tracebacks, and left its flow run RUNNING for ever. Ours runs in a process session of its own: an
interrupt reaches the run only, the run records its final states (the flow run Crashed with the
reason, the MLflow run KILLED) while the server is still up, and the server is stopped last.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from forja import stores
from forja.home import Home, configure, migrate_prefect_db, seed_mlflow_db

STARTUP_TIMEOUT_S = 120.0
_servers: list[subprocess.Popen] = []  # temporary servers this process started
_early: tuple[subprocess.Popen, str] | None = None  # launched by start_early, not yet used


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(home: Home) -> tuple[subprocess.Popen, str]:
    """Prefect's API (no UI) on a free loopback port, as Prefect's temporary server runs it; not
    waited for. Prefect is found, not imported: importing it takes most of a second, and the server
    starts sooner without that wait (bench/orchestration.py)."""
    from importlib.util import find_spec

    site = Path(find_spec("prefect").origin).parent.parent
    log_dir = home.root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_HOME": str(home.prefect_home),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # migrate_prefect_db() brought the database up to date before the server starts
        "PREFECT_API_DATABASE_MIGRATE_ON_START": "false",
        # A run saves no Prefect block: its server registers no block types (about 1 s on a new
        # database) and skips checking whether it should (loading every installed Prefect
        # collection: 0.3-0.5 s more of each start). `forja ui`'s server registers them for the UI.
        "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
        "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
    }
    env.pop("PREFECT_API_URL", None)
    port = _free_port()
    with open(log_dir / "prefect-run-server.log", "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(site),
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal does not reach it
        )
    _servers.append(proc)
    return proc, f"http://127.0.0.1:{port}/api"


def _start_server(
    home: Home, launched: tuple[subprocess.Popen, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """A healthy temporary server: the one `start_early` launched, or a new one."""
    for _ in range(3):  # a port taken between choosing and binding: choose again
        proc, url = launched or _launch(home)
        launched = None
        if _wait_healthy(proc, url):
            return proc, url
        _stop(proc)
    raise RuntimeError(
        f"the temporary Prefect server did not start; see {home.root / 'logs' / 'prefect-run-server.log'}"
    )


def start_early(home: Home) -> None:
    """Launch the temporary Prefect server now, in the background, so that it starts (about 5 s on
    2 cores) while the run imports its modules and validates its parameters (about 5 s more);
    `prefect_api` then finds it up. Only when no server is set and the database is ready at once
    (a copy of the migrated one, forja/stores.py); it is stopped at exit if the run never starts."""
    global _early
    if os.environ.get("PREFECT_API_URL") or _early is not None:
        return
    if not (home.prefect_home / "prefect.db").is_file() and not stores.has_template("prefect"):
        return  # migrating takes a while: after the parameters are validated, in prefect_api
    seed_mlflow_db(home)
    migrate_prefect_db(home.prefect_home)
    _early = _launch(home)
    atexit.register(_stop, _early[0])
    threading.Thread(target=_first_request, args=_early, name="forja-server-warm-up", daemon=True).start()


def _first_request(proc: subprocess.Popen, url: str) -> None:
    """Send the server its first API request as soon as it listens. FastAPI builds its routes on
    the first request (about 0.5 s of the server's CPU): done now, while the run still imports, the
    run's own first request does not wait for it (0.2-0.4 s of a run, bench/orchestration.py).
    Only the standard library, imported already: no import in this thread races the run's own."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with direct.open(f"{url}/admin/version", timeout=30) as response:
                response.read()
                return
        except urllib.error.HTTPError:  # it answered (an auth string, say): the routes are built
            return
        except OSError:  # not listening yet
            time.sleep(0.1)


def _wait_healthy(proc: subprocess.Popen, url: str) -> bool:
    import httpx

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return True
        time.sleep(0.1)
    return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def configure_and_start_api() -> Home:
    """`configure()` the home, and launch its temporary Prefect server in the background."""
    home = configure()
    start_early(home)
    return home


@contextlib.contextmanager
def prefect_api(home: Home) -> Iterator[str]:
    """The Prefect API a flow of this process reports to: `PREFECT_API_URL` when set (a server, a
    running `forja ui`), else a temporary server of our own, stopped when the block ends."""
    global _early
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    seed_mlflow_db(home)
    migrate_prefect_db(home.prefect_home)
    proc, url = _start_server(home, _early)
    _early = None
    os.environ["PREFECT_API_URL"] = url
    try:
        from prefect.settings import (
            PREFECT_API_URL,
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
            temporary_settings,
        )

        # No heartbeats: they let a server find a flow run whose process died (forja/stack/guard.py),
        # and this server dies with the process. Each flow run's heartbeat thread also cost up to 1 s
        # at its end, waiting out its sleep (about 1.5 s of a small run; bench/orchestration.py).
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield url
    finally:
        _drain_prefect_workers()  # logs and events still queued reach the server before it stops
        os.environ.pop("PREFECT_API_URL", None)
        _stop(proc)


def _drain_prefect_workers() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=5)


_interrupts = 0  # Ctrl-C / SIGTERM received by the innermost `interrupts()` block


@contextlib.contextmanager
def interrupts() -> Iterator[None]:
    """Ctrl-C or SIGTERM: a KeyboardInterrupt in the main thread (the run stops where it is; a
    checkpoint is only ever written whole); a second one exits at once."""
    global _interrupts
    _interrupts = 0

    def handler(signum, frame) -> None:
        global _interrupts
        _interrupts += 1
        if _interrupts > 1:
            for proc in _servers:  # os._exit skips every finally: stop our servers first
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            os._exit(130)
        raise KeyboardInterrupt

    def unraisable(u) -> None:  # an interrupt lost in a finaliser: re-raised later, not printed
        if not issubclass(u.exc_type, KeyboardInterrupt):
            unraisable_before(u)

    unraisable_before, sys.unraisablehook = sys.unraisablehook, unraisable
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        sys.unraisablehook = unraisable_before


def reraise_lost_interrupt(step: int) -> bool:
    """A training loop's `should_stop`: raise again, at the next step, an interrupt that never came out.

    The handler's KeyboardInterrupt surfaces wherever the main thread runs Python code when the
    signal lands; if that code is a finaliser or a callback whose errors Python only prints, the
    interrupt is lost (`interrupts()` keeps Python from printing it) and the run would go on to its
    end: once in CI, a Ctrl-C at step 20 of `forja train` ended in exit 0. The count the handler
    keeps is not lost."""
    if _interrupts:
        raise KeyboardInterrupt(f"interrupted (raised again at step {step})")
    return False
