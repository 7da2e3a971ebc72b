"""A new home starts from copies of the migrated empty databases (forja/stores.py), never over one
that exists. (Every `forja run` test in the suite runs its Prefect server and MLflow store on them.)"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

from forja import stores
from forja.home import Home, migrate_prefect_db, seed_mlflow_db

SEED = "import sys; from forja import stores; print(stores.seed(__import__('pathlib').Path(sys.argv[1]), 'prefect'))"


def test_a_new_homes_prefect_database_is_a_copy_made_once_and_never_overwritten(tmp_path):
    home = Home(tmp_path / "home")
    db = home.prefect_home / "prefect.db"
    migrate_prefect_db(home.prefect_home)  # a new home: a copy, no migration in place
    assert db.read_bytes() == stores.template("prefect").read_bytes()
    tables = {t for (t,) in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"flow_run", "task_run", "deployment", "alembic_version"} <= tables
    with sqlite3.connect(db) as con:  # the home's own data from now on
        con.execute("DELETE FROM alembic_version")
    assert not stores.seed(db, "prefect")  # an existing database is never replaced
    assert sqlite3.connect(db).execute("SELECT count(*) FROM alembic_version").fetchone() == (0,)


def test_processes_seeding_one_new_home_at_once_leave_one_whole_copy(tmp_path):
    dest = tmp_path / "prefect" / "prefect.db"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SEED, str(dest)], stdout=subprocess.PIPE, text=True, env=os.environ
        )
        for _ in range(4)
    ]
    answers = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(answers) == ["False", "False", "False", "True"], answers
    assert dest.read_bytes() == stores.template("prefect").read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["prefect.db"]  # no temporary file left


def test_a_new_homes_mlflow_store_makes_its_default_experiment_in_the_home(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    home = Home(tmp_path / "home")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", home.default_tracking_uri)
    seed_mlflow_db(home)
    assert home.mlflow_db.is_file()
    experiment = MlflowClient(home.default_tracking_uri).get_experiment("0")
    assert experiment.name == "Default"
    assert str(stores.cache_dir()) not in experiment.artifact_location, experiment.artifact_location
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # a server: nothing to seed
    other = Home(tmp_path / "other")
    seed_mlflow_db(other)
    assert not other.mlflow_db.exists()
