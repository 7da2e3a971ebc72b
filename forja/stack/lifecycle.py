"""`forja stack up | status | down | deploy`: the functions behind the commands.

`up` is idempotent: a service whose recorded process still runs is left alone, the others start in
order, each waited for; the ports and credentials of the first `up` are kept in DIR/stack.json, and
the data (Postgres cluster, SeaweedFS volumes, logs) in DIR, so `down` then `up` finds it all again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from forja.deploy_steps import project_dir
from forja.home import Home
from forja.stack import postgres, services
from forja.stack.spec import (
    WORK_POOL,
    StackError,
    State,
    client_env,
    load,
    new_state,
    port_in_use,
)
from lm.fileio import file_lock

Say = Callable[[str], None]
LOCK = ".lock"


def default_dir() -> Path:
    return Home.from_env().root / "stack"


def _state_for_up(folder: Path) -> State:
    state = load(folder)
    if state is None:
        state = new_state(Home.from_env().root)
    if not state.postgres_bin or not (Path(state.postgres_bin) / "postgres").is_file():
        state.postgres_bin = str(postgres.find_binaries())
    return state


def up(folder: Path, say: Say, crash_after_s: int | None = None) -> dict[str, str]:
    """Start what is not running, then `guard` (the zombie automation); returns the client environment."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    with file_lock(folder / LOCK):  # two `up`s (or an `up` and a `down`) at once take turns
        env = _up(folder, say, crash_after_s)
        _guard(folder, env, say)
        return env


def _guard(folder: Path, env: dict[str, str], say: Say) -> None:
    """`forja stack guard` against the stack (a process of its own: the stack's client settings)."""
    state = load(folder)
    assert state is not None
    child = {**os.environ, **env, "PREFECT_HOME": str(folder / "prefect-home")}
    cmd = [sys.executable, "-m", "forja.cli", "stack", "guard", "--within", str(state.crash_after_s)]
    t0 = time.time()
    r = subprocess.run(cmd, env=child, cwd=project_dir(), capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-3:]
        raise StackError(f"`forja stack guard` failed: {' | '.join(tail)}")
    say(f"{'guard':<15} {r.stdout.strip()} in {time.time() - t0:.1f} s")


def _up(folder: Path, say: Say, crash_after_s: int | None = None) -> dict[str, str]:
    state = _state_for_up(folder)
    if crash_after_s is not None:
        state.crash_after_s = crash_after_s
    state.save(folder)
    code = project_dir()
    todo = services.services(folder, state, code)
    for svc in todo:  # every port first: a busy one fails before anything starts
        if not services.alive(state.pids.get(svc.name)):
            _check_ports(svc, state, folder)
    for phase in sorted({svc.phase for svc in todo}):
        _start_phase([svc for svc in todo if svc.phase == phase], folder, state, code, say)
    return client_env(state)


def _check_ports(svc: services.Service, state: State, folder: Path) -> None:
    busy = [f"{state.ports[n]} ({n})" for n in svc.ports if port_in_use(state.ports[n])]
    if busy:
        raise StackError(
            f"{svc.name} cannot start: port {', '.join(busy)} is in use by another process; stop it, "
            f"or start a stack with new ports elsewhere (--dir), or delete {folder / 'stack.json'}"
        )


def _start_phase(group: list[services.Service], folder: Path, state: State, code: Path, say: Say) -> None:
    """Start the services of one phase that are not running, then wait for each to be ready."""
    started = []
    t0 = time.time()
    for svc in group:
        rec = state.pids.get(svc.name)
        if services.alive(rec):
            say(f"{svc.name:<15} running (pid {int(rec[0])})")
            continue
        _check_ports(svc, state, folder)
        svc.before()
        proc = services.launch(svc, folder, code)
        state.pids[svc.name] = services.record(proc)
        state.save(folder)
        started.append((svc, proc))
    for svc, proc in started:
        try:
            svc.ready(lambda p=proc: p.poll() is None)
        except StackError as e:
            raise StackError(f"{e} ({folder / 'logs' / (svc.name + '.log')})") from None
        say(f"{svc.name:<15} ready in {time.time() - t0:.1f} s")


def status(folder: Path) -> dict[str, dict]:
    state = load(folder.resolve())
    if state is None:
        raise StackError(f"no stack in {folder}: start one with `forja stack up --dir {folder}`")
    names = [s.name for s in services.services(folder.resolve(), state, project_dir())]
    return {
        n: {
            "running": services.alive(state.pids.get(n)),
            "pid": int(state.pids[n][0]) if n in state.pids else None,
        }
        for n in names
    }


def down(folder: Path, say: Say) -> None:
    folder = folder.resolve()
    if load(folder) is None:
        raise StackError(f"no stack in {folder}")
    with file_lock(folder / LOCK):
        _down(folder, say)


def _down(folder: Path, say: Say) -> None:
    state = load(folder)
    if state is None:
        raise StackError(f"no stack in {folder}")
    todo = services.services(folder, state, project_dir())
    for phase in sorted({svc.phase for svc in todo}, reverse=True):  # a phase's services together
        group = [svc for svc in todo if svc.phase == phase and services.alive(state.pids.get(svc.name))]
        t0 = time.time()
        with ThreadPoolExecutor(max(1, len(group))) as pool:
            for svc, _ in zip(
                group,
                pool.map(lambda s: services.stop(state.pids[s.name], s.stop_signal, s.stop_wait), group),
                strict=True,
            ):
                say(f"{svc.name:<15} stopped in {time.time() - t0:.1f} s")
        for svc in todo:
            if svc.phase == phase:
                state.pids.pop(svc.name, None)
        state.save(folder)


def running_env(folder: Path) -> dict[str, str]:
    """The client environment of a stack whose services all run (else a one-line error)."""
    st = status(folder)
    stopped = [n for n, s in st.items() if not s["running"]]
    if stopped:
        raise StackError(f"the stack in {folder} is not running ({', '.join(stopped)}): run `forja stack up`")
    return client_env(load(folder.resolve()))


def deploy(folder: Path, say: Say) -> list[str]:
    """`prefect deploy` of infra/prefect.yaml's deployments on the stack's pool; returns their names."""
    env = running_env(folder)
    code = project_dir()
    spec_file = code / "infra" / "prefect.yaml"
    spec = yaml.safe_load(spec_file.read_text())
    names = [d["name"] for d in spec["deployments"] if d["work_pool"]["name"] == WORK_POOL]
    child = {**os.environ, **env, "PREFECT_HOME": str(folder.resolve() / "prefect-home")}
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
    if not services.http_ok(
        f"{env['PREFECT_API_URL']}/work_pools/{WORK_POOL}", env["PREFECT_API_AUTH_STRING"]
    ):
        say(f"creating work pool {WORK_POOL}")
        _run([*prefect, "work-pool", "create", WORK_POOL, "--type", "process"], child, code)
    args = [a for n in names for a in ("--name", n)]
    t0 = time.time()
    _run([*prefect, "deploy", "--prefect-file", str(spec_file), *args], child, code)
    say(f"deployed {', '.join(names)} to pool {WORK_POOL} in {time.time() - t0:.1f} s")
    return names


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> None:
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-3:]
        raise StackError(f"`{' '.join(cmd[2:5])} ...` failed: {' | '.join(tail)}")


def restart(folder: Path, name: str, say: Say) -> None:
    """Stop one service and start it again (its data kept), waiting until it is ready."""
    folder = folder.resolve()
    with file_lock(folder / LOCK):
        state = load(folder)
        if state is None:
            raise StackError(f"no stack in {folder}")
        code = project_dir()
        [svc] = [s for s in services.services(folder, state, code) if s.name == name]
        t0 = time.time()
        if name in state.pids:
            services.stop(state.pids.pop(name), svc.stop_signal, svc.stop_wait)
            state.save(folder)
        say(f"{name:<15} stopped in {time.time() - t0:.1f} s")
        _start_phase([svc], folder, state, code, say)
