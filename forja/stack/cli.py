"""`forja stack ...`: flags in, one call to lifecycle, its result out (env on stdout, progress on stderr)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated

import typer

from forja.stack import lifecycle
from forja.stack.spec import CRASH_AFTER_S

app = typer.Typer(
    help="The production topology (Postgres, Prefect server and worker, MLflow + S3, Dask) on this machine.",
    no_args_is_help=True,
)

DirOpt = Annotated[
    Path | None,
    typer.Option("--dir", help="The stack's folder (data, logs, state); default FORJA_HOME/stack."),
]


def _say(line: str) -> None:
    typer.echo(line, err=True)


def _print_env(env: dict[str, str], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(env))
    else:
        typer.echo("\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items()))


@app.command()
def up(
    dir: DirOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the environment as one JSON object.")] = False,
    crash_after: Annotated[
        int | None,
        typer.Option(
            "--crash-after",
            min=45,
            help=f"Seconds without a heartbeat after which a flow run is Crashed (kept; default {CRASH_AFTER_S}).",
        ),
    ] = None,
) -> None:
    """Start the services that are not running; print the environment a client needs (eval "$(...)")."""
    folder = dir or lifecycle.default_dir()
    _print_env(lifecycle.up(folder, _say, crash_after), json_)
    _say(f"stack in {folder}; `forja stack deploy` adds the deployments, `forja stack down` stops it")


@app.command()
def status(
    dir: DirOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Which services run (exit code 1 unless all do)."""
    st = lifecycle.status(dir or lifecycle.default_dir())
    if json_:
        typer.echo(json.dumps(st))
    else:
        for name, s in st.items():
            typer.echo(
                f"{name:<15} {'running' if s['running'] else 'stopped'}"
                + (f" (pid {s['pid']})" if s["running"] else "")
            )
    if not all(s["running"] for s in st.values()):
        raise typer.Exit(1)


@app.command()
def env(
    dir: DirOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print the environment of the running stack (as `up` does, starting nothing)."""
    _print_env(lifecycle.running_env(dir or lifecycle.default_dir()), json_)


@app.command()
def down(dir: DirOpt = None) -> None:
    """Stop every service (reverse order); the data stays in DIR for the next `up`."""
    lifecycle.down(dir or lifecycle.default_dir(), _say)


@app.command()
def deploy(dir: DirOpt = None) -> None:
    """Deploy infra/prefect.yaml's deployments to the stack's `forja` work pool (created if missing)."""
    lifecycle.deploy(dir or lifecycle.default_dir(), _say)


@app.command()
def guard(
    within: Annotated[
        int,
        typer.Option("--within", min=45, help="Seconds without a heartbeat before a flow run is Crashed."),
    ] = CRASH_AFTER_S,
) -> None:
    """Create the automation that crashes flow runs whose heartbeats stopped (idempotent), and end
    what such runs left running (task runs, MLflow runs). For the servers of this environment
    (PREFECT_API_URL, MLFLOW_TRACKING_URI): `forja stack up` runs it; with compose, run it once."""
    from forja.stack.guard import guard as run_guard

    done = run_guard(within)
    ended = done["ended_mlflow_runs"]
    typer.echo(
        f"zombie automation {done['automation']} (within {within} s); "
        f"{len(ended)} MLflow run(s) of ended flow runs ended KILLED"
    )
