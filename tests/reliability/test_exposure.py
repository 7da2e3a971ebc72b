"""Exposure and secrets: what Forja's servers let in, and where credentials end up.

- `forja ui` binds to 127.0.0.1 without authentication; any other address needs (and generates)
  Prefect's API auth string and MLflow's basic-auth app with an allow-list of hosts.
- Those settings, started for real on 127.0.0.1, refuse requests without the credentials.
- A URL source with credentials (http://user:password@host/...) is read, and the password is
  written nowhere Forja writes: log lines, MLflow params / tags / artifacts, manifests, the run folder.
  The one place it stays is Prefect's record of the flow run's parameters (docs/security.md),
  which a netrc file avoids: the last test passes the credentials that way.
- An s3:// source read in the same run, with its keys in the environment (AWS_*): its secret key
  is nowhere at all, Prefect's database included.
"""

import inspect
import json
import os
import secrets
import sqlite3
import stat
from pathlib import Path

import httpx
import mlflow
import pytest
from helpers import shakespeare_text
from support import FAST, run_python, s3_server, serve_files, start_servers

from forja import cli
from forja import ui as ui_mod
from forja.home import Home

ROOT = Path(__file__).resolve().parents[2]


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


# ------------------------------------------------------------------ generated settings


def test_servers_bind_to_loopback_without_auth_by_default(tmp_path):
    prefect, mlflow_server = ui_mod.server_specs(Home(tmp_path))
    assert flag(prefect.cmd, "--host") == "127.0.0.1" == prefect.env["PREFECT_SERVER_API_HOST"]
    assert flag(mlflow_server.cmd, "--host") == "127.0.0.1"
    assert "PREFECT_SERVER_API_AUTH_STRING" not in prefect.env and "--app-name" not in mlflow_server.cmd
    assert inspect.signature(cli.ui).parameters["host"].default == "127.0.0.1"  # `forja ui`
    assert not list(tmp_path.iterdir())  # no credentials made for a loopback server


def test_any_other_address_requires_and_generates_auth(tmp_path):
    home = Home(tmp_path)
    with pytest.raises(ui_mod.UIError, match="authentication is required"):
        ui_mod.server_specs(home, "0.0.0.0")
    auth = ui_mod.load_or_make_auth(home)
    assert stat.S_IMODE((tmp_path / ui_mod.AUTH_FILE).stat().st_mode) == 0o600
    assert len(auth["password"]) >= 32 and len(auth["secret_key"]) >= 43
    assert ui_mod.load_or_make_auth(home) == auth  # generated once, then reused
    prefect, mlflow_server = ui_mod.server_specs(home, "0.0.0.0", 4200, 5000, auth, ["forja.example.org"])
    assert prefect.env["PREFECT_SERVER_API_AUTH_STRING"] == f"{auth['user']}:{auth['password']}"
    assert prefect.env["PREFECT_UI_API_URL"] == "http://forja.example.org:4200/api"
    assert flag(mlflow_server.cmd, "--app-name") == "basic-auth"
    allowed = set(flag(mlflow_server.cmd, "--allowed-hosts").split(","))
    assert {"forja.example.org", "forja.example.org:5000", "127.0.0.1:5000"} <= allowed
    assert "*" not in allowed and "0.0.0.0" not in allowed
    assert flag(mlflow_server.cmd, "--artifacts-destination") == str(home.mlflow_artifacts)
    ini = Path(mlflow_server.env["MLFLOW_AUTH_CONFIG_PATH"])
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    text = ini.read_text()
    assert f"admin_password = {auth['password']}" in text and "authenticate_request_basic_auth" in text
    assert mlflow_server.env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == auth["secret_key"]


# ------------------------------------------------------------------ the real servers, with auth


@pytest.fixture(scope="module")
def auth_servers(tmp_path_factory):
    """`forja ui`'s remote-mode settings (auth on), bound to 127.0.0.1 for the test."""
    home = Home(tmp_path_factory.mktemp("forja-home-auth"))
    auth = ui_mod.load_or_make_auth(home)
    specs, procs = start_servers(
        lambda prefect, mlflow: ui_mod.server_specs(home, "127.0.0.1", prefect, mlflow, auth),
        home.root / "logs",
    )
    prefect, mlflow_server = specs
    env = {
        **os.environ,
        "FORJA_HOME": str(home.root),
        "PREFECT_API_URL": prefect.url + "/api",
        "PREFECT_API_AUTH_STRING": f"{auth['user']}:{auth['password']}",
        "MLFLOW_TRACKING_URI": mlflow_server.url,
        "MLFLOW_TRACKING_USERNAME": auth["user"],
        "MLFLOW_TRACKING_PASSWORD": auth["password"],
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    yield {"home": home, "auth": auth, "prefect": prefect.url, "mlflow": mlflow_server.url, "env": env}
    ui_mod.stop(procs)


@pytest.mark.slow
def test_remote_mode_servers_refuse_requests_without_credentials(auth_servers):
    s, auth = auth_servers, auth_servers["auth"]
    good, bad = (auth["user"], auth["password"]), (auth["user"], "not-the-password")
    search = f"{s['mlflow']}/api/2.0/mlflow/experiments/search?max_results=1"
    codes = {
        "mlflow, no credentials": httpx.get(search, timeout=30).status_code,
        "mlflow, wrong password": httpx.get(search, auth=bad, timeout=30).status_code,
        "mlflow, credentials": httpx.get(search, auth=good, timeout=30).status_code,
        "mlflow, foreign Host header": httpx.get(
            search, auth=good, headers={"Host": "evil.example"}, timeout=30
        ).status_code,
    }
    flows = f"{s['prefect']}/api/flows/filter"
    codes |= {
        "prefect, no auth string": httpx.post(flows, json={}, timeout=30).status_code,
        "prefect, wrong auth string": httpx.post(flows, json={}, auth=bad, timeout=30).status_code,
        "prefect, auth string": httpx.post(flows, json={}, auth=good, timeout=30).status_code,
    }
    print(json.dumps(codes, indent=1))
    assert codes["mlflow, no credentials"] == codes["mlflow, wrong password"] == 401
    assert codes["mlflow, credentials"] == 200
    assert codes["mlflow, foreign Host header"] in (400, 403)  # DNS rebinding: the allow-list
    assert codes["prefect, no auth string"] == codes["prefect, wrong auth string"] == 401
    assert codes["prefect, auth string"] == 200


# ------------------------------------------------------------------ credentials in a URL source


@pytest.fixture()
def private_site(tmp_path):
    """A local site that requires a password; yields (host:port, password, handler class)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "shakespeare.txt").write_text(shakespeare_text(150_000))
    with serve_files(root, "reader", "pw-" + secrets.token_hex(12)) as (host, handler):
        yield host, handler.password, handler


def files_holding(root: Path, secret: bytes, skip: tuple[str, ...] = ()) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(skip) and secret in p.read_bytes()
    )


def rows_holding(db: Path, secret: str) -> list[str]:
    """Table.column of every SQLite row holding `secret` (what the database says, WAL included)."""
    found = []
    with sqlite3.connect(db) as con:
        tables = [t for (t,) in con.execute("select name from sqlite_master where type = 'table'")]
        for t in tables:
            for col in [c[1] for c in con.execute(f'pragma table_info("{t}")')]:
                q = f'select count(*) from "{t}" where instr(cast("{col}" as text), ?) > 0'
                if con.execute(q, (secret,)).fetchone()[0]:
                    found.append(f"{t}.{col}")
    return found


@pytest.fixture()
def private_bucket(tmp_path):
    """An S3 server holding one gzipped text object; yields (s3:// URL, its AWS_* env, secret key)."""
    import gzip

    with s3_server(tmp_path / "seaweedfs", "private") as s3:
        body = gzip.compress(shakespeare_text(20_000).encode())
        s3["client"].put_object(Bucket="private", Key="plays/more.txt.gz", Body=body)
        yield "s3://private/plays", s3["env"], s3["secret"]


@pytest.mark.slow
def test_url_credentials_never_reach_logs_params_artifacts_or_manifests(
    auth_servers, private_site, private_bucket, monkeypatch
):
    """A full `forja run` against the authenticated servers, reading a password-protected URL and
    a private S3 bucket."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", auth_servers["auth"]["user"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_servers["auth"]["password"])
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    host, password, handler = private_site
    s, home = auth_servers, auth_servers["home"]
    url = f"http://{handler.user}:{password}@{host}/shakespeare.txt"
    bucket, s3_env, s3_secret = private_bucket
    sets = [a for kv in [*FAST, "max_steps=10"] for a in ("--set", kv)]
    r = run_python(
        ["-m", "forja.cli", "run", "--source", url, "--source", bucket, *sets],
        env={**s["env"], **s3_env},
        timeout=900,
    )
    assert handler.served >= 2  # the credentials were used: the site refuses requests without them
    result = json.loads(r.stdout[r.stdout.index("{") : r.stdout.rindex("}") + 1])
    redacted = f"http://***@{host}/shakespeare.txt"

    assert password not in r.stdout + r.stderr  # log lines
    assert s3_secret not in r.stdout + r.stderr
    import pyarrow.parquet as pq  # the bucket's object was read: its documents are in the dataset

    parts = [f for f in home.root.rglob("*.parquet") if "ingest" in f.parts and "data" in f.parts]
    read = {p for f in parts for p in pq.read_table(f, columns=["path"])["path"].to_pylist()}
    assert f"{bucket}/more.txt.gz" in read
    # The MLflow store (params, tags, inputs, logged-model params) and the artifacts, through the API
    c = mlflow.MlflowClient(tracking_uri=s["mlflow"])
    run = c.get_run(result["mlflow_run_id"])
    assert run.data.params["sources"] == f"{redacted},{bucket}"
    assert not [k for k, v in {**run.data.params, **run.data.tags}.items() if password in v]
    config = json.loads(Path(c.download_artifacts(run.info.run_id, "config.json")).read_text())
    assert config["params"]["sources"] == [redacted, bucket]
    # Every file under the Forja home: mlflow.db, mlartifacts/ (every artifact and the model), the
    # data folders and their manifests, the run folder, Prefect's result storage, the server logs.
    assert files_holding(home.root, password.encode(), skip=("prefect.db",)) == []
    assert rows_holding(home.mlflow_db, password) == []
    # the S3 secret key is in no file at all, Prefect's database included
    assert files_holding(home.root, s3_secret.encode()) == []
    assert rows_holding(home.mlflow_db, s3_secret) == []
    assert rows_holding(home.prefect_home / "prefect.db", s3_secret) == []
    # Prefect keeps the flow run's parameters as given: the one place the password stays.
    assert rows_holding(home.prefect_home / "prefect.db", password) == ["flow_run.parameters"]
    flow_run = httpx.get(
        f"{s['prefect']}/api/flow_runs/{run.data.tags['prefect.flow_run_id']}",
        auth=(s["auth"]["user"], s["auth"]["password"]),
        timeout=30,
    ).json()
    assert flow_run["parameters"]["sources"] == [url, bucket]
    print(f"{handler.served} authenticated requests; password found only in Prefect's flow_run.parameters")


@pytest.mark.slow
def test_netrc_credentials_stay_out_of_parameters(private_site, tmp_path):
    """The documented alternative: no credentials in the URL, a netrc file read by aiohttp."""
    host, password, handler = private_site
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1\nlogin {handler.user}\npassword {password}\n")
    netrc.chmod(0o600)
    env = {
        **os.environ,
        "NETRC": str(netrc),
        "FSSPEC_HTTP": json.dumps({"client_kwargs": {"trust_env": True}}),
    }
    out = tmp_path / "ingest"
    r = run_python(
        ["-m", "forja.cli", "ingest", f"http://{host}/shakespeare.txt", "--out", str(out)],
        env=env,
        timeout=300,
    )
    assert handler.served >= 2 and json.loads(r.stdout)["counts"]["total"]["documents"] >= 1
    assert password not in r.stdout + r.stderr and files_holding(out, password.encode()) == []
