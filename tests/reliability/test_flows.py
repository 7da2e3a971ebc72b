"""Reliability of the flows and the tracking: a killed run, concurrent runs, bad parameters.

Everything is real: `forja run` / `forja retrain` as subprocesses, SIGKILL, a Prefect server and an
MLflow server (tests/flows/conftest.py) or the embedded defaults (each process starts Prefect's
temporary server on FORJA_HOME/prefect/prefect.db and writes FORJA_HOME/mlflow.db).

The two embedded runs use the same arguments as the killed run: their final weights are the
uninterrupted reference the resumed run must equal, bit for bit (CPU).
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import pytest
from helpers import shakespeare_text
from support import FAST, Servers, write_corpus

from flows.params import PipelineParams
from forja.home import Home
from lm import checkpoint as ckpt
from lm.errors import ConfigError
from lm.fileio import sha256_file
from tasks.common import read_manifest, verify_outputs

ROOT = Path(__file__).resolve().parents[2]


RUN = [*FAST, "run.export_hf=false"]  # the killed run and the embedded pair: same arguments
# One torch thread per process: several run at once on a small machine, and oversubscribed threads
# made training 2-3x slower. Every run here uses it, so weights compare bit for bit.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def sets(*items: str) -> list[str]:
    return [a for kv in items for a in ("--set", kv)]


def forja_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "forja.cli", *args]


def last_json(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") : stdout.rindex("}") + 1])


def final_sha(run_dir: str | Path) -> str:
    return sha256_file(ckpt.latest_checkpoint(run_dir) / ckpt.MODEL_FILE)


def embedded_env(home: Path) -> dict[str, str]:
    """The environment of a user who set nothing: no server URLs, only FORJA_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    return env | {"FORJA_HOME": str(home), "PYTHONUNBUFFERED": "1", **ONE_THREAD}


def assert_no_lock_errors(*stderrs: str) -> None:
    for err in stderrs:
        assert "database is locked" not in err.lower(), err[-3000:]
        assert "OperationalError" not in err, err[-3000:]


def assert_data_intact(dataset_dir: Path) -> int:
    """Every stage folder of a dataset matches its manifest (sha256 of every output)."""
    folders = [dataset_dir / "ingest", dataset_dir / "eval"]
    folders += [p for sub in ("clean", "tokens") for p in (dataset_dir / sub).iterdir() if p.is_dir()]
    n = 0
    for folder in folders:
        if folder.name.startswith("."):
            continue
        verify_outputs(folder, read_manifest(folder))
        n += 1
    return n


@pytest.fixture(scope="module")
def flow_servers(tmp_path_factory):
    s = Servers(tmp_path_factory.mktemp("forja-home"))
    s.env.update(ONE_THREAD)
    yield s
    s.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), shakespeare_text(150_000))


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "a.txt").write_text(shakespeare_text(1000))
    return folder


# ------------------------------------------------------------------ bad parameters


BAD = {  # parameter -> (forja run arguments, what the message must say)
    "preset": (["--preset", "nope"], "preset 'nope'"),
    "train.lr": (sets("lr=-1"), "'lr'"),
    "sources": (["--source", "/nonexistent/corpus.txt"], "source '/nonexistent/corpus.txt' does not exist"),
    "tokenize.vocab_size": ([], "tokenize.vocab_size=4096"),  # + the 1 kB corpus, default vocab 4096
}


def test_vocab_precheck_bounds_from_planned_sizes(tiny_corpus, corpus):
    with pytest.raises(
        ConfigError,
        match=r"1,000 bytes in all: too little text for tokenize.vocab_size=4096.*at most 2,260 pieces",
    ):
        PipelineParams(sources=[str(tiny_corpus)]).validate_all()
    PipelineParams(sources=[str(tiny_corpus)], tokenize={"vocab_size": 2260}).validate_all()  # the bound
    PipelineParams(sources=[str(corpus)], tokenize={"vocab_size": 512}).validate_all()  # a real run's


@pytest.mark.slow
def test_bad_parameters_fail_forja_run_at_once(tmp_path, tiny_corpus):
    """Exit code 2, one line naming the parameter, no traceback, no data folder."""
    procs = {}
    for name, (args, _) in BAD.items():
        home = tmp_path / name
        extra = ["--source", str(tiny_corpus)] if name == "tokenize.vocab_size" else []
        procs[name] = (
            home,
            time.monotonic(),
            subprocess.Popen(
                forja_cmd("run", *args, *extra),
                env=embedded_env(home),
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
    for name, (home, t0, p) in procs.items():
        out, err = p.communicate(timeout=300)
        seconds = time.monotonic() - t0
        lines = [line for line in err.splitlines() if line.strip()]
        assert p.returncode == 2, (name, err[-2000:])
        assert lines[-1].startswith("error: ") and BAD[name][1] in lines[-1], (name, lines[-1])
        assert "Traceback" not in err and out == "", (name, err[-2000:])
        assert not (home / "data").exists() and not (home / "runs").exists(), name
        print(f"forja run with a bad {name}: exit 2 after {seconds:.1f}s: {lines[-1]}")


FLOW_SCRIPT = """
import json, sys, time
from forja.home import configure
configure()
from flows.params import RunParams, TrainParams
from flows.pipeline import pipeline
from tasks.tokenize import TokenizeConfig
run, tiny = RunParams(dataset="badparams"), sys.argv[1]
cases = {
    "preset": dict(preset="nope"),
    "train.lr": dict(train=TrainParams(lr=-1.0)),
    "sources": dict(sources=["/nonexistent/corpus.txt"]),
    "tokenize.vocab_size": dict(sources=[tiny], tokenize=TokenizeConfig(vocab_size=4096)),
}
out = {}
for name, kwargs in cases.items():
    t0 = time.monotonic()
    state = pipeline(run=run, return_state=True, **kwargs)
    out[name] = {"id": str(state.state_details.flow_run_id), "type": state.type.value,
                 "message": state.message, "seconds": time.monotonic() - t0}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_bad_parameters_fail_the_flow_before_any_task(flow_servers, tiny_corpus):
    """Through the flow itself: the flow run is Failed, names the parameter, and no task run started."""
    r = subprocess.run(
        [sys.executable, "-c", FLOW_SCRIPT, str(tiny_corpus)],
        env=flow_servers.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = last_json(r.stdout)
    for name, res in results.items():
        assert res["type"] == "FAILED", (name, res)
        assert BAD[name][1] in res["message"], (name, res["message"])
        flow_run = httpx.get(f"{flow_servers.prefect_api}/flow_runs/{res['id']}", timeout=30).json()
        assert flow_run["state"]["type"] == "FAILED"
        assert flow_servers.task_states(res["id"]) == {}, name  # no task, no sub-flow
        print(f"flow with a bad {name}: Failed after {res['seconds']:.2f}s, no task run: {res['message']}")
    assert not flow_servers.home.dataset("badparams").exists()


# ------------------------------------------------------------------ concurrency


@pytest.mark.slow
def test_two_retrains_at_once_on_real_servers_leave_the_champion_on_the_better_model(
    flow_servers, corpus, tmp_path
):
    """Two `forja retrain` on the same data folder and MLflow store, each with a new file (so both
    train), racing for `champion`: both finish, the data folder is intact, the better one wins."""
    text = shakespeare_text(250_000)
    (tmp_path / "y1.txt").write_text(text[150_000:200_000])
    (tmp_path / "y2.txt").write_text(text[200_000:250_000])
    # A home of its own (its own MLflow registry and data folder) on the shared Prefect server: the
    # race for `champion` starts from an empty registry whichever tests of the module ran before.
    home = Home(tmp_path / "race-home")
    home.root.mkdir()
    env = flow_servers.env | {"FORJA_HOME": str(home.root), "MLFLOW_TRACKING_URI": home.default_tracking_uri}
    c = mlflow.MlflowClient(tracking_uri=home.default_tracking_uri)
    assert not c.search_registered_models()  # also creates the store before the two runs race
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            forja_cmd(
                "retrain",
                "--source",
                str(corpus),
                "--source",
                str(tmp_path / f"y{i}.txt"),
                *sets(*RUN, "run.dataset=race", f"max_steps={steps}"),
            ),
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, steps in ((1, 10), (2, 30))
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    seconds = time.monotonic() - t0
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-4000:]
    assert_no_lock_errors(*(err for _, err in outs))
    results = [last_json(out) for out, _ in outs]
    versions = [r["model_version"] for r in results]
    assert None not in versions and len(set(versions)) == 2, results
    tags = {v: c.get_model_version("forja-race", v).tags for v in versions}
    assert len({t["eval_set_digest"] for t in tags.values()}) == 1  # compared on the same fixed set
    bpb = {v: float(t["eval_bpb"]) for v, t in tags.items()}
    champion = c.get_model_version_by_alias("forja-race", "champion")
    assert str(champion.version) == min(bpb, key=bpb.get), (bpb, champion.version)
    for r in results:
        assert c.get_run(r["mlflow_run_id"]).info.status == "FINISHED"
        verified = ckpt.verify_checkpoint(ckpt.latest_checkpoint(r["run_dir"]))
        assert verified
    n = assert_data_intact(home.dataset("race"))
    print(
        f"two retrains at once: {seconds:.0f}s, bpb {bpb}, champion v{champion.version}, {n} stage folders intact"
    )


@pytest.fixture(scope="module")
def embedded_pair(corpus, tmp_path_factory):
    """Two `forja run` at once with the embedded defaults, on one FORJA_HOME (same data folder, same
    prefect.db and mlflow.db), each into its own --out; the arguments of the killed run."""
    base = tmp_path_factory.mktemp("embedded")
    home = base / "home"
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            forja_cmd("run", "--source", str(corpus), "--out", str(base / f"out{i}"), *sets(*RUN)),
            env=embedded_env(home),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    return {
        "home": home,
        "seconds": time.monotonic() - t0,
        "codes": [p.returncode for p in procs],
        "stdout": [o for o, _ in outs],
        "stderr": [e for _, e in outs],
        "out": [base / f"out{i}" for i in range(2)],
    }


@pytest.mark.slow
def test_two_embedded_runs_at_once_share_one_home(embedded_pair):
    """No PREFECT_API_URL: two temporary Prefect servers on one prefect.db, one SQLite mlflow.db."""
    pair = embedded_pair
    assert pair["codes"] == [0, 0], pair["stderr"][0][-3000:] + pair["stderr"][1][-3000:]
    assert_no_lock_errors(*pair["stderr"])
    results = [last_json(out) for out in pair["stdout"]]
    shas = [final_sha(out) for out in pair["out"]]
    assert shas[0] == shas[1]  # neither run disturbed the other: the same weights, bit for bit
    c = mlflow.MlflowClient(tracking_uri=f"sqlite:///{pair['home'] / 'mlflow.db'}")
    for r in results:
        assert c.get_run(r["mlflow_run_id"]).info.status == "FINISHED"
    with sqlite3.connect(pair["home"] / "prefect" / "prefect.db") as db:
        states = db.execute("select state_type from flow_run where parent_task_run_id is null").fetchall()
    assert sorted(s for (s,) in states) == ["COMPLETED", "COMPLETED"]
    n = assert_data_intact(pair["home"] / "data" / "default")
    print(
        f"two embedded runs at once: {pair['seconds']:.0f}s, same final sha256 {shas[0][:12]}, {n} stage folders intact"
    )


# ------------------------------------------------------------------ a killed run


@pytest.mark.slow
def test_killed_run_is_marked_and_resumes_to_the_uninterrupted_weights(flow_servers, corpus, embedded_pair):
    out = flow_servers.home.root / "runs" / "killed"
    args = ["run", "--source", str(corpus), "--out", str(out), *sets(*RUN)]
    # The run SIGKILLs itself right after its first checkpoint (step 10 of 20) gets its final name,
    # through the checkpoint's fault hook: no polling, so no race with a fast CPU.
    kill_after_first_save = {ckpt.FAULT_ENV: "renamed:1"}
    p = subprocess.run(
        forja_cmd(*args),
        env=flow_servers.env | kill_after_first_save,
        cwd=ROOT,
        capture_output=True,
        timeout=400,
    )
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()[-3000:]  # the kill happened
    killed_at = [ckpt.read_state(x)["step"] for x in ckpt.list_checkpoints(out)]
    assert killed_at == [10], killed_at  # killed mid-training, its first checkpoint complete

    c = mlflow.MlflowClient(tracking_uri=flow_servers.home.default_tracking_uri)
    exp = c.get_experiment_by_name("forja").experiment_id
    (killed,) = c.search_runs([exp], f"tags.run_dir = '{out.resolve()}'")
    assert killed.info.status == "RUNNING"  # nothing ended it: the process is gone
    killed_flow_run = killed.data.tags["prefect.flow_run_id"]

    t0 = time.monotonic()
    r = flow_servers.forja(*args)  # re-trigger with the same arguments
    seconds = time.monotonic() - t0
    result = last_json(r.stdout)
    assert "resumed from" in r.stderr and f"(step {max(killed_at)})" in r.stderr
    killed = c.get_run(killed.info.run_id)
    assert killed.info.status == "KILLED" and "process is gone" in killed.data.tags["forja.ended_by"]
    state = httpx.get(f"{flow_servers.prefect_api}/flow_runs/{killed_flow_run}", timeout=30).json()["state"]
    assert state["type"] == "CRASHED", state

    new = c.get_run(result["mlflow_run_id"])
    states = flow_servers.task_states(new.data.tags["prefect.flow_run_id"])
    for name in ("ingest", "clean", "tokenize"):
        assert states[name] == "Cached", (name, states)
    assert states["train"] == "Completed" and new.info.status == "FINISHED"
    assert result["step"] == 20
    reference = final_sha(embedded_pair["out"][0])
    assert final_sha(out) == reference  # equal to the uninterrupted runs' weights, bit for bit
    print(
        f"killed at checkpoints {killed_at}; the MLflow run went RUNNING -> KILLED, the Prefect flow run "
        f"-> CRASHED; re-run in {seconds:.0f}s resumed from step {max(killed_at)}, data stages Cached; "
        f"final sha256 {reference[:12]} == uninterrupted"
    )
