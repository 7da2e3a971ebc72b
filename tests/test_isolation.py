"""Importing Forja changes nothing in the process; a flow run without the CLI still uses the Forja home.

Configuration belongs to the entry points (the CLI, and the flows when a Prefect worker runs them):
a test, a notebook or a worker that merely imports a package must find os.environ as it left it.
"""

import json
import os
from pathlib import Path

import pytest
from support import child_env, last_json_line, run_python

ROOT = Path(__file__).resolve().parents[1]

IMPORT_SCRIPT = """
import importlib, json, os, sys
before = dict(os.environ)
for name in sys.argv[1:]:
    importlib.import_module(name)
after = dict(os.environ)
print(json.dumps({k: [before.get(k), after.get(k)] for k in before.keys() | after.keys()
                  if before.get(k) != after.get(k)}))
"""

# A worker's order: Prefect first (its settings are read then), the flow module second, then the run.
WORKER_SCRIPT = """
import json, os, sys
import prefect
from prefect import task
from flows import forja_flow
from flows.pipeline import pipeline
from flows.retrain import retrain

@task(persist_result=True, result_serializer="json")
def double(x: int) -> int:
    return 2 * x

@forja_flow("probe")
def probe() -> dict:
    return {"double": double(21), "mlflow": os.environ.get("MLFLOW_TRACKING_URI")}

print(json.dumps({**probe(), "storages": [str(pipeline.result_storage), str(retrain.result_storage)]}))
"""


def test_importing_the_packages_changes_no_environment_variable(tmp_path):
    modules = ["lm", "tasks", "flows", "forja", "forja.cli", "forja.home", "flows.pipeline", "flows.retrain"]
    done = run_python(["-c", IMPORT_SCRIPT, *modules], env=child_env(PYTHONPATH=str(ROOT)), cwd=tmp_path)
    changed = last_json_line(done.stdout)
    # MLflow's own import marks its telemetry session; nothing else may change.
    changed = {k: v for k, v in changed.items() if k != "_MLFLOW_TELEMETRY_SESSION_ID"}
    assert changed == {}
    assert not (tmp_path / ".forja").exists()  # nor is the default home created


@pytest.mark.slow
def test_a_flow_run_by_a_worker_stores_results_and_tracks_under_the_forja_home(tmp_path):
    home, elsewhere = tmp_path / "home", tmp_path / "prefect-home"
    # Prefect reads its settings at import, before forja's configure() raises the temporary
    # server's startup timeout: on a loaded 2-core machine the default 20 s is too short.
    env = child_env(
        FORJA_HOME=str(home),
        PREFECT_HOME=str(elsewhere),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    )
    out = last_json_line(run_python(["-c", WORKER_SCRIPT], env=env, cwd=tmp_path, timeout=900).stdout)
    storage = home.resolve() / "prefect" / "storage"
    assert out["double"] == 42
    assert out["storages"] == [str(storage), str(storage)]
    assert out["mlflow"] == f"sqlite:///{home.resolve() / 'mlflow.db'}"
    stored = [json.loads(p.read_text()) for p in storage.iterdir() if p.is_file()]
    assert any(r.get("result") == "42" or r.get("result") == 42 for r in stored), stored
    assert not (elsewhere / "storage").exists()


def test_the_session_runs_in_its_own_home_without_inherited_server_settings(forja_home):
    assert os.environ["FORJA_HOME"] == str(forja_home) and forja_home.is_dir()
    assert os.environ["PREFECT_HOME"] == str(forja_home / "prefect")
    ours = ("PREFECT_HOME", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")  # set by conftest.py
    inherited = [k for k in os.environ if k.startswith(("PREFECT_", "MLFLOW_")) and k not in ours]
    assert inherited == []
