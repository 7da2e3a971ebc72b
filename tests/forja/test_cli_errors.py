"""The common mistakes of a new user, through the real `forja` command: each ends in one `error:`
line that names the path or parameter and the fix, exit code 2, no traceback, nothing half-written.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import shakespeare_text
from support import ROOT, child_env


def forja(*args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "forja.cli", *args],
        env={**child_env(), "FORJA_HOME": str(home), "PYTHONPATH": str(ROOT)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    for needle in needles:
        assert needle in last, (needle, last)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """An ingest and a clean folder of a little real text, a file, an empty file."""
    w = tmp_path_factory.mktemp("cli")
    (w / "a-file").write_text("not a folder\n")
    (w / "empty.txt").write_text("")
    (w / "small.txt").write_text(shakespeare_text(3000))
    home = w.parent / f"{w.name}-home"  # outside: a command may create the home, not a stray file
    r = forja("ingest", "small.txt", "--out", "ing", "--set", "split=blank_line", home=home, cwd=w)
    assert r.returncode == 0, r.stderr
    assert forja("clean", "ing", "--out", "cl", home=home, cwd=w).returncode == 0
    return {"dir": w, "home": home}


CASES = {
    "ingest --out names a file": (["ingest", "small.txt", "--out", "a-file"], ["--out a-file is a file"]),
    "train --out names a file": (["train", "--data", "cl", "--out", "a-file"], ["cl"]),
    "ingest of a missing source": (["ingest", "nope.txt", "--out", "x"], ["'nope.txt' does not exist"]),
    "clean of a folder that is no stage output": (["clean", "nope", "--out", "x"], ["nope", "forja ingest"]),
    "tokenize of an ingest folder": (["tokenize", "ing", "--out", "x"], ["'ingest'", "expected 'clean'"]),
    "train on a clean folder": (["train", "--data", "cl", "--out", "r"], ["cl"]),
    "eval of an empty text": (["eval", "ing", "--text", "empty.txt"], ["empty.txt"]),
    "eval of a missing model": (["eval", "nope", "--text", "small.txt"], ["nope"]),
    "eval of an unknown registered model": (
        ["eval", "models:/nope@champion", "--text", "small.txt"],
        ["models:/nope@champion"],
    ),
    "sample of a bad run URI": (["sample", "runs:/bad/model"], ["runs:/bad/model"]),
    "an unknown --set key": (["clean", "ing", "--out", "x", "--set", "min_charz=3"], ["min_charz"]),
    "run --resume without --out": (["run", "--resume"], ["--resume needs --out"]),
    "run --resume of a folder run did not make": (["run", "--out", ".", "--resume"], ["pipeline.json"]),
    "run --out names a file": (["run", "--out", "a-file"], ["--out a-file is a file"]),
    "a dataset name that cannot be a folder": (["run", "--set", "run.dataset=bad name"], ["run.dataset"]),
    "reproduce of an unknown run": (["reproduce", "deadbeef"], ["deadbeef"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_common_mistake_ends_in_one_line(work, case):
    args, needles = CASES[case]
    before = sorted(p.name for p in work["dir"].iterdir())
    r = forja(*args, home=work["home"], cwd=work["dir"])
    assert_one_line_error(r, *needles)
    assert sorted(p.name for p in work["dir"].iterdir()) == before  # nothing half-written beside them


@pytest.mark.slow
def test_sources_with_no_usable_text_say_where_the_text_went(tmp_path):
    (tmp_path / "bins").mkdir()
    (tmp_path / "bins" / "a.bin").write_bytes(bytes(range(256)) * 8)
    r = forja("run", "--source", "bins", "--set", "run.dataset=bins", home=tmp_path / "home", cwd=tmp_path)
    assert_one_line_error(r, "no usable text in bins", "quarantined 1 item(s)", "'binary': 1")
    assert "vocab_size" not in r.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_an_empty_validation_split_fails_before_training(tmp_path):
    (tmp_path / "one.txt").write_text("To be, or not to be, that is the question. " * 20)
    r = forja(
        "run",
        "--source",
        "one.txt",
        "--set",
        "tokenize.vocab_size=300",
        "--set",
        "tokenize.val_fraction=0.01",  # one document, one chunk: to the train split
        "--set",
        "run.dataset=one",
        home=tmp_path / "home",
        cwd=tmp_path,
    )
    assert_one_line_error(r, "validation split is empty", "tokenize.val_fraction", "evaluate.eval_text")
    assert "forja.train" not in r.stderr  # caught before training started
