"""Ctrl-C in `forja run` (and in `forja ingest`, whose shards run in worker processes), the way a
terminal sends it: SIGINT to the whole foreground process group.

The run must stop within seconds with a few lines and no traceback, leave the Prefect flow run
Crashed (not RUNNING) and the MLflow run KILLED, keep its last complete checkpoint, and print the
exact command that resumes it; that command must finish with the weights of an uninterrupted run.
"""

from __future__ import annotations

import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import shakespeare_text
from support import FAST, ROOT, run_python, write_corpus

from lm import checkpoint as ckpt
from lm.fileio import sha256_file

pytestmark = pytest.mark.slow

RUN = [*FAST, "max_steps=80", "run.export_hf=false", "run.dataset=interrupts"]


def forja_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    return {**env, "FORJA_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start(args: list[str], home: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "forja.cli", *args],
        env=forja_env(home),
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        # and SIGINT not ignored, as in a terminal: a test run started in the background (a CI
        # script, `cmd &`) inherits SIGINT ignored, which would hide what Ctrl-C does
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def forja_run(args: list[str], home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`forja ARGS` to the end in the FORJA_HOME `home`; fails the test, with its stderr, if it fails."""
    return run_python(["-m", "forja.cli", *args], env=forja_env(home), timeout=timeout)


def wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text():
            return
        assert proc.poll() is None, (
            f"forja exited ({proc.returncode}) before {text!r}:\n{log.read_text()[-3000:]}"
        )
        time.sleep(0.1)
    raise AssertionError(f"no {text!r} in {timeout}s:\n{log.read_text()[-3000:]}")


def final_weights(run_dir: Path) -> str:
    return sha256_file(ckpt.resolve_checkpoint(run_dir) / ckpt.MODEL_FILE)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), shakespeare_text(150_000))


def sets(*extra: str) -> list[str]:
    return [a for kv in [*RUN, *extra] for a in ("--set", kv)]


def test_ctrl_c_stops_cleanly_and_the_printed_command_resumes_to_the_same_weights(tmp_path, corpus):
    home, log = tmp_path / "home", tmp_path / "run.log"
    proc = start(["run", "--source", str(corpus), *sets()], home, log)
    wait_for(log, "step 30/80", proc)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    rc = proc.wait(timeout=60)
    seconds = time.monotonic() - t0
    out = log.read_text()
    assert rc == 130, out[-3000:]
    assert seconds < 10, f"{seconds:.1f}s from Ctrl-C to exit"
    assert "Traceback" not in out and "Error logging to API" not in out, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("to resume: forja run --out ") and last.endswith(" --resume"), last
    run_dir = Path(last.removeprefix("to resume: forja run --out ").removesuffix(" --resume"))
    assert ckpt.latest_checkpoint(run_dir) is not None  # its last complete checkpoint is kept

    mlflow_db = sqlite3.connect(home / "mlflow.db")
    statuses = [s for (s,) in mlflow_db.execute("SELECT status FROM runs")]
    assert statuses == ["KILLED"], statuses
    prefect_db = sqlite3.connect(home / "prefect" / "prefect.db")
    states = dict(
        prefect_db.execute("SELECT name, state_type FROM flow_run WHERE parent_task_run_id IS NULL")
    )
    assert list(states.values()) == ["CRASHED"], states

    forja_run(shlex.split(last.removeprefix("to resume: forja ")), home)
    reference = tmp_path / "reference"
    forja_run(["run", "--source", str(corpus), "--out", str(reference), *sets()], tmp_path / "home-reference")
    assert final_weights(run_dir) == final_weights(reference)


def test_a_second_ctrl_c_exits_at_once(tmp_path, corpus):
    home, log = tmp_path / "home", tmp_path / "run.log"
    proc = start(["run", "--source", str(corpus), *sets()], home, log)
    wait_for(log, "step 10/80", proc)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=30)
    seconds = time.monotonic() - t0
    assert proc.returncode == 130 and seconds < 5, (
        f"exit {proc.returncode} {seconds:.1f}s after the second:\n" + (log.read_text()[-3000:])
    )


def test_ctrl_c_in_forja_train_says_how_to_resume_and_the_command_finishes_the_run(tmp_path):
    from helpers import make_token_dir

    tokens = make_token_dir(shakespeare_text(60_000), tmp_path / "tokens", vocab_size=512)
    log = tmp_path / "train.log"
    args = ["train", "--data", str(tokens), "--out", str(tmp_path / "run")]
    args += ["--set", "max_steps=60", "--set", "log_every=10", "--set", "checkpoint_every=10"]
    proc = start(args, tmp_path / "home", log)
    wait_for(log, "step 20/60", proc)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    rc = proc.wait(timeout=60)
    seconds = time.monotonic() - t0
    out = log.read_text()
    assert rc == 130 and seconds < 10, f"exit {rc} {seconds:.1f}s after Ctrl-C:\n{out[-3000:]}"
    assert "Traceback" not in out and "last complete checkpoint" in out, out[-2000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("to resume: forja train ") and " --resume" in last, last
    resumed = forja_run(shlex.split(last.removeprefix("to resume: forja ")), tmp_path / "home", timeout=900)
    assert "resumed from" in resumed.stderr and '"step": 60' in resumed.stdout


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ctrl_c_in_forja_serve_ends_the_runs_in_flight_crashed_not_running(tmp_path, corpus):
    """A run triggered by the printed line, then Ctrl-C to `forja serve` while it runs: the flow
    run, its sub-flow run and task runs end Crashed and its MLflow run KILLED, before the server
    stops; nothing is left RUNNING."""
    home, log = tmp_path / "home", tmp_path / "serve.log"
    proc = start(["serve", "--port", str(free_port()), "--source", str(corpus)], home, log)
    wait_for(log, "deployment run 'pipeline/forja-pipeline'", proc)
    line = next(x for x in log.read_text().splitlines() if "forja-pipeline'" in x).strip()
    new_shell = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no venv, no PREFECT_API_URL
    done = subprocess.run(["bash", "-c", line], env=new_shell, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr  # the printed line works in a new shell
    wait_for(log, "Task run 'ingest-plan'", proc)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    assert time.monotonic() - t0 < 30, log.read_text()[-2000:]
    prefect_db = sqlite3.connect(home / "prefect" / "prefect.db")
    flows = dict(prefect_db.execute("SELECT name, state_type FROM flow_run").fetchall())
    tasks = [s for (s,) in prefect_db.execute("SELECT state_type FROM task_run")]
    assert len(flows) == 2 and set(flows.values()) == {"CRASHED"}, flows  # pipeline + prepare-data
    assert "RUNNING" not in tasks and "CRASHED" in tasks, tasks
    statuses = [s for (s,) in sqlite3.connect(home / "mlflow.db").execute("SELECT status FROM runs")]
    assert statuses == ["KILLED"], statuses


def test_ctrl_c_in_forja_ingest_ends_its_worker_processes_at_once(tmp_path):
    """Ctrl-C while `forja ingest` reads a big file's stretches in two processes: the parent alone
    handles it, ends the workers and cancels the shards not started, prints one line and exits 130;
    nothing is published. (Before, each worker took the KeyboardInterrupt as its shard's result
    and went on to the next shard, and the command ended only after every shard was read.)"""
    big = tmp_path / "big.jsonl"
    words = "word " * 200
    with open(big, "w") as f:
        f.writelines(f'{{"text": "{i} {words}"}}\n' for i in range(100_000))  # 100 MB: 50 shards
    out, log = tmp_path / "out", tmp_path / "log"
    args = ["ingest", str(big), "--out", str(out), "--set", "shard_bytes=2000000", "--set", "workers=2"]
    proc = start(args, tmp_path / "home", log)
    deadline = time.monotonic() + 120
    while not list(out.glob(".staging/*/shard-*")):  # a worker has begun its first shard
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.01)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    took = time.monotonic() - t0
    text = log.read_text()
    assert "interrupted after" in text and "run the same command to start again" in text, text[-2000:]
    assert "Traceback" not in text, text[-3000:]
    assert not (out / "manifest.json").exists()
    assert len(list(out.glob(".staging/*/shard-*"))) < 50  # the shards not started were not read
    assert took < 15, f"{took:.1f}s to stop"
    time.sleep(1)  # the ended workers are reaped by init: none may still run
    ps = subprocess.run(["ps", "-o", "stat=", "-g", str(proc.pid)], capture_output=True, text=True)
    assert [s for s in ps.stdout.split() if not s.startswith("Z")] == [], ps.stdout
