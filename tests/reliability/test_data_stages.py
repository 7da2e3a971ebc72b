"""Data reliability: bad input loses nothing and stops nothing; SIGKILL leaves nothing half-written.

Everything runs for real: `forja ingest|clean|tokenize|run` as subprocesses on real files, killed
with a real SIGKILL, a real Prefect server and MLflow store (tests/flows/conftest.py). Root ignores
chmod 000, so the runs that must meet an unreadable file drop the capabilities that let root read
anything (fixtures.drop_dac_privileges) - the same idea as tests/tasks/test_ingest.py's child that
drops to `nobody`, but the process keeps owning the Forja home it writes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sentencepiece as spm
from fixtures import Expected, build_bad_corpus, drop_dac_privileges
from helpers import shakespeare_text
from support import FAST, Servers, run_python

from lm.data import read_header
from lm.fileio import KILL_WRITE_ENV, TMP_PREFIX
from tasks.common import read_manifest
from tasks.ingest import REASONS

ROOT = Path(__file__).resolve().parents[2]


def forja(*args: str, env: dict[str, str] | None = None, unprivileged: bool = False, timeout: int = 300):
    """Run the forja CLI in a subprocess (as root: without the capabilities that bypass chmod)."""
    return subprocess.run(
        [sys.executable, "-m", "forja.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=drop_dac_privileges if unprivileged else None,
    )


def last_json(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") : stdout.rindex("}") + 1])


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def bad_corpus(tmp_path):
    exp = build_bad_corpus(tmp_path / "in")
    yield exp
    exp.restore_permissions()


def rel(exp: Expected, path: str) -> str:
    return str(Path(path).relative_to(exp.root))


def check_ingest(exp: Expected, out: Path) -> dict:
    """The ingest output against what the corpus must give, item by item; returns the run counts."""
    m = read_manifest(out, "ingest")
    data = [r for o in m["outputs"] for r in pq.read_table(out / o["path"]).to_pylist()]
    quarantine = [r for o in m["quarantine"]["outputs"] for r in pq.read_table(out / o["path"]).to_pylist()]

    # every quarantine row says where (path, offset) and why (a known reason, a detail)
    for q in quarantine:
        assert q["path"] and q["offset"] is not None and q["offset"] >= 0, q
        assert q["reason"] in REASONS and q["detail"], q
    assert sorted((rel(exp, q["path"]), q["offset"], q["reason"]) for q in quarantine) == sorted(
        exp.quarantine
    )

    # every accepted document, from where it was read, byte for byte
    got = sorted((rel(exp, d["path"]), d["offset"], d["text"]) for d in data)
    assert got == sorted(exp.accepted)
    assert {d["text"] for d in data if d["encoding"] != "utf-8"} == exp.legacy
    big = max(data, key=lambda d: d["n_bytes"])
    assert big["n_bytes"] == 10 * 1024 * 1024 and "\n" not in big["text"]  # the 10 MB line, whole

    # the counts: every input item is accepted, a duplicate or quarantined, and the manifest says so
    run = m["counts"]["run"]
    assert run["items"] == exp.items
    assert (run["accepted"], run["duplicates"], run["already_known"]) == (
        len(exp.accepted),
        exp.duplicates,
        0,
    )
    assert run["quarantined"] == len(exp.quarantine) and run["quarantine_by_reason"] == exp.by_reason
    assert run["accepted"] + run["duplicates"] + run["quarantined"] == exp.items
    assert m["counts"]["total"]["documents"] == len(exp.accepted) == len(data)
    assert m["counts"]["total"]["quarantine_by_reason"] == exp.by_reason
    assert m["quarantine"]["rows"] == len(quarantine) == len(exp.quarantine)
    return run


def test_bad_input_corpus_every_item_accounted_for(bad_corpus, tmp_path):
    exp = bad_corpus
    assert len(exp.by_reason) >= 8  # every kind of bad input is there
    out = tmp_path / "out"
    r = forja("ingest", str(exp.root), "--out", str(out), "--set", "split=blank_line", unprivileged=True)
    assert r.returncode == 0, r.stderr[-3000:]
    run = check_ingest(exp, out)
    assert last_json(r.stdout)["run"]["items"] == run["items"]

    # a second ingest of the same corpus stores nothing new and quarantines nothing twice
    before = (out / "manifest.json").read_bytes()
    r = forja("ingest", str(exp.root), "--out", str(out), "--set", "split=blank_line", unprivileged=True)
    assert r.returncode == 0 and last_json(r.stdout)["changed"] is False, r.stderr[-3000:]  # not even read
    assert "ingest shard" not in r.stderr
    r = forja(
        "ingest", str(exp.root), "--out", str(out), "--set", "split=blank_line", "--fresh", unprivileged=True
    )
    assert r.returncode == 0, r.stderr[-3000:]
    again = last_json(r.stdout)
    assert again["changed"] is False and again["run"]["accepted"] == 0
    assert again["run"]["already_known"] == len(exp.accepted) and again["run"]["quarantined_new"] == 0
    assert (out / "manifest.json").read_bytes() == before


@pytest.mark.slow
def test_forja_run_on_bad_input_logs_ingest_counts_to_mlflow(tmp_path_factory):
    """`forja run` on the bad-input corpus (plus a little Shakespeare to train on) completes; the
    ingest counts reach the manifest and the MLflow run. The 10 MB line is dropped by clean's
    length rule (clean.max_chars), so tokenizing stays quick."""
    base = tmp_path_factory.mktemp("bad-run")
    exp = build_bad_corpus(base / "in", good_text=shakespeare_text(60_000))
    servers = Servers(tmp_path_factory.mktemp("forja-home"))
    try:
        sets = [*FAST, "run.dataset=badinput", "clean.max_chars=1000000"]
        args = ["run", "--source", str(exp.root), *[a for kv in sets for a in ("--set", kv)]]
        t0 = time.perf_counter()
        r = run_python(["-m", "forja.cli", *args], env=servers.env, preexec_fn=drop_dac_privileges)
        print(f"forja run on the bad-input corpus: {time.perf_counter() - t0:.1f}s")
        result = last_json(r.stdout)
        run = check_ingest(exp, servers.home.dataset("badinput") / "ingest")

        import mlflow  # (slow to import: only here)

        mlflow.set_tracking_uri(servers.home.default_tracking_uri)
        metrics = mlflow.MlflowClient().get_run(result["mlflow_run_id"]).data.metrics
        print(json.dumps({k: v for k, v in sorted(metrics.items()) if k.startswith("data.ingest")}))
        assert metrics["data.ingest.items"] == exp.items
        assert metrics["data.ingest.accepted"] == len(exp.accepted) == run["accepted"]
        assert metrics["data.ingest.duplicates"] == exp.duplicates
        assert metrics["data.ingest.quarantined"] == len(exp.quarantine)
        by_reason = {
            k.rsplit(".", 1)[1]: v for k, v in metrics.items() if k.startswith("data.ingest.quarantine.")
        }
        assert by_reason == exp.by_reason
        assert metrics["data.ingest.total_documents"] == len(exp.accepted)
        # one account of duplicates: ingest's exact ones next to clean's, in the run's metrics
        (report,) = (servers.home.dataset("badinput") / "clean").glob("*/report.json")
        dropped = {r["rule"]: r.get("dropped") for r in json.loads(report.read_text())["rules"]}
        assert metrics["data.duplicates.ingest_exact"] == exp.duplicates
        assert metrics["data.duplicates.clean_exact"] == dropped["exact_dedup"]
        assert metrics["data.duplicates.clean_near"] == dropped["near_dedup"]
        assert (
            metrics["data.duplicates.removed"]
            == exp.duplicates + dropped["exact_dedup"] + dropped["near_dedup"]
        )
        assert result["eval_bpb"] > 0
    finally:
        servers.close()
        exp.restore_permissions()


# --------------------------------------------------------------------------- SIGKILL during writes

STAGES = ("ingest", "clean", "tokenize")
# Moments worth a kill: the HIT-th atomic write whose final path matches the glob (FORJA_FAULT_KILL_WRITE,
# lm/fileio.py) kills the stage's process group with its temporary file written and not yet renamed.
EVENTS = {
    "ingest": {
        "staged part": "*/out/.staging/*/shard-*/*",
        "commit": "*/out/snapshots/*",  # the parts moved in, the snapshot not yet recorded
    },
    "clean": {
        "shard work file": "*/work/shards/*",
        "output parts": f"*/{TMP_PREFIX}out.*/part-*",
    },
    "tokenize": {
        "token files": f"*/{TMP_PREFIX}out.*/work/*",
        "shards": "*.bin:2",
    },
}
RANDOM_KILLS = 1  # per stage, at a seeded random moment of the uninterrupted run's duration
LEFTOVER_MARKS = (TMP_PREFIX, ".staging", ".spool-", "duckdb-spill-")


def stage_args(stage: str, src: dict[str, Path], out: Path) -> list[str]:
    if stage == "ingest":
        return ["ingest", "python-docs", str(src["text"]), "--out", str(out), "--set", "split=blank_line"]
    if stage == "clean":  # small parts: more files, more moments to be killed in
        return ["clean", str(src["ingest"]), "--out", str(out), "--set", "part_bytes=262144"]
    return [
        "tokenize",
        str(src["clean"]),
        "--out",
        str(out),
        "--set",
        "vocab_size=1024",
        "--set",
        "shard_tokens=50000",
    ]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Reference outputs of the three stages, each run once without interruption, and their times:
    the docstrings of the standard library and tinyshakespeare (~3 MB of text, ~16k documents)."""
    base = tmp_path_factory.mktemp("reference")
    src = {"text": base / "tinyshakespeare.txt"}
    src["text"].write_text(shakespeare_text(), encoding="utf-8")
    seconds = {}
    for stage in STAGES:
        out = base / stage
        t0 = time.perf_counter()
        r = forja(*stage_args(stage, src, out))
        seconds[stage] = time.perf_counter() - t0
        assert r.returncode == 0, r.stderr[-3000:]
        src[stage] = out
    return src, seconds


def open_every_final_file(folder: Path) -> int:
    """Open every file whose name is final (no temporary component) as what it claims to be."""
    n = 0
    for p in sorted(folder.rglob("*")):
        parts = p.relative_to(folder).parts
        if not p.is_file() or any(c.startswith(TMP_PREFIX) or c.startswith("duckdb-spill-") for c in parts):
            continue
        if p.suffix == ".parquet":
            pq.read_table(p)  # every page, every column
        elif p.suffix == ".bin":
            read_header(p)  # magic, version, and size == header's promise
        elif p.suffix == ".json":
            json.loads(p.read_text(encoding="utf-8"))
        elif p.suffix == ".model":
            spm.SentencePieceProcessor(model_file=str(p))
        elif p.name != ".lock":
            raise AssertionError(f"unexpected file under a final name: {p}")
        n += 1
    return n


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if any(p.name.startswith(m) for m in LEFTOVER_MARKS)]


def identity(stage: str, out: Path) -> tuple[str, dict[str, str]]:
    """The manifest digest and each output's digest (ingest: the content digest, without the
    ingestion timestamps)."""
    m = read_manifest(out, stage)
    key = "content_sha256" if stage == "ingest" else "sha256"
    outs = {o["path"]: o.get(key, o["sha256"]) for o in m["outputs"]}
    if stage == "ingest":
        outs |= {o["path"]: o["content_sha256"] for o in m["quarantine"]["outputs"]}
    return m["digest"], outs


def run_and_kill(args: list[str], root: Path, when: float | str, log: Path) -> dict:
    """Start `forja args` and SIGKILL its process group: at the write `when` names (a
    FORJA_FAULT_KILL_WRITE glob: the stage kills itself there), or `when` seconds after the start;
    report whether it died by the kill and what it was writing."""
    env = dict(os.environ) | ({KILL_WRITE_ENV: when} if isinstance(when, str) else {})
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "forja.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        t0 = time.perf_counter()
        try:
            proc.wait(timeout=None if isinstance(when, str) else when)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait()
    return {
        "killed": rc == -signal.SIGKILL,
        "at": round(time.perf_counter() - t0, 2),
        "writing": [str(p.relative_to(root)) for p in leftovers(root)],
    }


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_during_stage_writes_leaves_readable_files_and_a_clean_rerun(stage, uninterrupted, tmp_path):
    """Kill `forja <stage>` with SIGKILL while it writes: when a temporary file of a chosen step
    appears, then at a seeded random moment, each run starting from what the killed ones left.
    After every kill each file under a final name must open; then a re-run must complete with the
    uninterrupted run's digests and leave no temporary file or staging folder behind."""
    src, seconds = uninterrupted
    ref = identity(stage, src[stage])
    rng = random.Random(f"sigkill-{stage}")
    moments: list[tuple[str, float | str]] = list(EVENTS[stage].items())
    moments += [(f"random {i}", rng.uniform(0.2, 0.95) * seconds[stage]) for i in range(RANDOM_KILLS)]
    root = tmp_path / stage
    root.mkdir()
    out = root / "out"
    args = stage_args(stage, src, out)
    report = []
    for i, (name, when) in enumerate(moments):
        k = run_and_kill(args, root, when, tmp_path / f"kill-{i}.log")
        report.append({"moment": name, **k, "final_files_opened": open_every_final_file(root)})
    print(json.dumps({stage: report}))
    # the event-triggered kills hit the stage while it wrote
    assert all(k["killed"] and k["writing"] for k in report[: len(EVENTS[stage])]), report

    r = forja(*args)
    assert r.returncode == 0, f"re-run after the kills: {r.stderr[-3000:]}"
    assert identity(stage, out) == ref, "the re-run after the kills differs from the uninterrupted run"
    assert leftovers(root) == [], f"left after the re-run: {leftovers(root)}"
    assert open_every_final_file(root) == open_every_final_file(src[stage])
