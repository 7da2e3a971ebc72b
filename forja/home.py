"""Forja's home folder: where data, runs, the MLflow store and the Prefect database live by default.

Nothing needs to be started: with no settings, everything goes under `./.forja/`

    .forja/data/<dataset>/ingest/           incremental Parquet snapshot of the sources
    .forja/data/<dataset>/clean/<key>/      cleaned Parquet, one folder per (input digest, rules)
    .forja/data/<dataset>/tokens/<key>/     token shards, one folder per (input digest, tokenizer config)
    .forja/data/<dataset>/eval/             the fixed evaluation set models are compared on
    .forja/runs/<run>/                      training runs (checkpoints, metrics)
    .forja/mlflow.db, .forja/mlartifacts/   MLflow: SQLite backend and artifact folder
    .forja/prefect/                         PREFECT_HOME: the embedded server's SQLite database

`FORJA_HOME` moves all of it. Without it, a command uses the nearest `.forja/` in the current
folder or a parent, so a command run from a subfolder of the project finds the project's home. A real server replaces the embedded defaults through the usual
variables: `MLFLOW_TRACKING_URI` (and the server's artifact store) and `PREFECT_API_URL`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from forja import stores
from lm.fileio import file_lock

DEFAULT_HOME = ".forja"
UI_STATE = "ui.json"  # written by `forja ui`: the URLs of the servers it started


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def from_env(cls) -> Home:
        """`FORJA_HOME` if set; else the nearest `.forja/` in the current folder or a parent (as git
        finds `.git`); else a new `./.forja/`. Every command resolves it the same way."""
        if os.environ.get("FORJA_HOME"):
            return cls(Path(os.environ["FORJA_HOME"]).expanduser().resolve())
        cwd = Path.cwd().resolve()
        for folder in (cwd, *cwd.parents):
            if (folder / DEFAULT_HOME).is_dir():
                return cls(folder / DEFAULT_HOME)
        return cls(cwd / DEFAULT_HOME)

    def dataset(self, name: str) -> Path:
        return self.root / "data" / name

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def default_tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"

    def ui_state(self) -> dict | None:
        """What a running `forja ui` left behind (its URLs), if it is still running."""
        path = self.root / UI_STATE
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text())
            os.kill(int(state["pid"]), 0)  # raises if that process is gone
        except (ValueError, KeyError, OSError):
            return None
        return state


def configure(home: Home | None = None) -> Home:
    """Point Prefect and MLflow at the Forja home, unless the environment already names servers.

    Call this before importing prefect: Prefect reads its settings from the environment.
    A `forja ui` that is running is picked up, so runs started from a terminal show in its UI.
    """
    home = home or Home.from_env()
    if not home.root.exists():
        logging.getLogger("forja.home").info(
            "created the Forja home %s (set FORJA_HOME to keep it elsewhere)", home.root
        )
    home.root.mkdir(parents=True, exist_ok=True)
    ui = home.ui_state() or {}
    os.environ.setdefault("PREFECT_HOME", str(home.prefect_home))
    if ui.get("prefect_api_url"):
        os.environ.setdefault("PREFECT_API_URL", ui["prefect_api_url"])
    os.environ.setdefault("MLFLOW_TRACKING_URI", ui.get("mlflow_tracking_uri") or home.default_tracking_uri)
    # Results of cached tasks must outlive the process for caching across flow runs.
    # Results are small JSON dicts (paths, digests, metrics): JSON, never pickle, is read back.
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    os.environ.setdefault("PREFECT_RESULTS_DEFAULT_SERIALIZER", "json")
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(home.prefect_home / "storage"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # Forja's own log lines ("promoted ...", "nothing to retrain") in the Prefect run logs too;
    # outside a flow run (the CLI before and after it) they stay in the terminal only.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "forja")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    # Quieter, and no phoning home from a tool that promises to work offline.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # The temporary server's telemetry also writes to prefect.db in a deferred transaction: with two
    # runs sharing the database it failed with 'database is locked' (tests/reliability/test_flows.py).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return home


def seed_mlflow_db(home: Home) -> None:
    """A new home whose MLflow store is its own SQLite file starts from a copy of the migrated
    empty database (forja/stores.py) instead of migrating one in the first run."""
    if os.environ.get("MLFLOW_TRACKING_URI", home.default_tracking_uri) == home.default_tracking_uri:
        stores.seed(home.mlflow_db, "mlflow")


def prepare_embedded_prefect() -> None:
    """Before a flow runs without a Prefect server: make sure its database exists and is current.

    Call it after `configure()` and after the parameters are validated, so that a bad parameter
    still fails at once rather than after creating a database.
    """
    seed_mlflow_db(Home.from_env())
    if not os.environ.get("PREFECT_API_URL"):
        migrate_prefect_db(Path(os.environ["PREFECT_HOME"]))


def migrate_prefect_db(prefect_home: Path) -> None:
    """Create or upgrade the embedded Prefect database once, under a file lock.

    Each `forja run` without a server starts a temporary Prefect server, and each of those runs the
    database migrations as it starts. Two runs started together on a fresh FORJA_HOME both ran them
    and one server failed ('duplicate column name: infrastructure_pid'). Migrating here first, one
    process at a time, leaves the servers nothing to change. A marker per Prefect version makes the
    check free after the first time; an upgrade of Prefect migrates again.
    """
    from importlib.metadata import version

    db = prefect_home / "prefect.db"
    marker = prefect_home / f".migrated-{version('prefect')}"
    if marker.is_file() and db.is_file():
        return
    prefect_home.mkdir(parents=True, exist_ok=True)
    with file_lock(prefect_home / "prefect.db.lock"):
        if marker.is_file() and db.is_file():  # another run did it while we waited
            return
        if not db.is_file() and stores.seed(db, "prefect"):  # a copy of the migrated empty database
            marker.touch()
            return
        done = subprocess.run(
            [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
            capture_output=True,
            text=True,
            env=os.environ | {"PREFECT_HOME": str(prefect_home), "PREFECT_LOGGING_LEVEL": "WARNING"},
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"could not create the Prefect database {db}: {done.stderr.strip()[-2000:]}\n"
                "Fix: check the folder is writable, or point PREFECT_API_URL at a Prefect server."
            )
        marker.touch()
