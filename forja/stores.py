"""Empty, migrated databases for a new Forja home: migrated once per machine and version, then copied.

A new home needs two SQLite databases: the embedded Prefect server's and the MLflow store's. Created
in place, Prefect's runs its full chain of Alembic migrations: 20-30 s on a 2-core machine, paid by
the first run of every new home (most of the 35 s of orchestration issue #13 measured), and MLflow's
1-3 s more. What the migrations leave is the same every time: the schema and its Alembic version
(MLflow's default experiment, whose folder depends on where it was made, is left out here and made
by MLflow when the home opens its store). So Forja migrates once into a cache, named by the package
version, and a new home gets a copy of the file: milliseconds. The databases stay real: the same
servers and clients read them, and a copy is upgraded in place as before when Prefect is upgraded.

The cache is `$FORJA_CACHE_DIR`, else `$XDG_CACHE_HOME/forja`, else `~/.cache/forja`. `make setup`
fills it (`python -m forja.stores`), so even the first run on a machine starts warm. Deleting it is
safe: the next new home rebuilds it. Where it cannot be written, a home migrates in place as before.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from lm.fileio import file_lock

log = logging.getLogger("forja.stores")

_MLFLOW_INIT = """
import sys
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
SqlAlchemyStore(f"sqlite:///{sys.argv[1]}", sys.argv[2]).engine.dispose()
"""


def cache_dir() -> Path:
    if os.environ.get("FORJA_CACHE_DIR"):
        return Path(os.environ["FORJA_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "forja"


def _run(cmd: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"could not create {what}: {done.stderr.strip()[-2000:]}")


def _build_prefect(folder: Path) -> Path:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(folder), "PREFECT_LOGGING_LEVEL": "WARNING"}
    _run(
        [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], env, "the Prefect database"
    )
    return folder / "prefect.db"


def _build_mlflow(folder: Path) -> Path:
    db = folder / "mlflow.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    _run([sys.executable, "-c", _MLFLOW_INIT, str(db), str(folder / "artifacts")], env, "the MLflow database")
    with sqlite3.connect(db) as con:  # MLflow makes experiment 0 again, in the home's own folder
        con.execute("DELETE FROM experiments WHERE experiment_id = 0")
    con.close()
    return db


_BUILDERS = {"prefect": _build_prefect, "mlflow": _build_mlflow}


def _path(kind: str) -> Path:
    return cache_dir() / "templates" / f"{kind}-{version(kind)}.db"


def has_template(kind: str) -> bool:
    return _path(kind).is_file()


def template(kind: str) -> Path | None:
    """The migrated, empty database of `kind` ("prefect" or "mlflow") for the installed version,
    built on first use; None where the cache cannot be written (the caller migrates in place)."""
    path = _path(kind)
    folder = path.parent
    if path.is_file():
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with file_lock(folder / f"{kind}.lock"):
            if path.is_file():  # another process built it while we waited
                return path
            log.info("migrating an empty %s database once for this machine (%s)", kind, path)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                os.replace(_BUILDERS[kind](Path(tmp)), path)  # whole or absent
        return path
    except OSError as e:
        log.warning("cannot keep a migrated %s database in %s (%s): migrating in place", kind, folder, e)
        return None


def seed(dest: Path, kind: str) -> bool:
    """Give `dest` (absent) a copy of the migrated empty database; False when there is none to copy
    or `dest` exists (also when another process seeded it first: never overwritten)."""
    if dest.exists():
        return False
    source = template(kind)
    if source is None:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(source, tmp)
    try:
        os.link(tmp, dest)  # atomic, and fails rather than replace a database made meanwhile
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: a rename, after one more look
        if dest.exists():
            return False
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return True


if __name__ == "__main__":  # `make setup`: build both once, so the first run on this machine is warm
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for kind in _BUILDERS:
        print(template(kind))
