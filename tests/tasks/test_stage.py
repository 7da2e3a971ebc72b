"""The Stage runner on a toy stage: the key, "up to date", re-runs on changed code, config or input,
the atomic publish, the leftover sweep and the refusal to replace what is not the stage's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel
from support import query_interrupted_by_ctrl_c

from tasks.common import StageError, interrupts_kept, make_manifest, output_record, write_manifest
from tasks.stage import STAGES, Stage, get_stage, run_stage


class UpperConfig(BaseModel):
    suffix: str = "!"
    fail: bool = False  # a way to make `write` fail half-way
    ctrl_c_in_query: bool = False  # a way to press Ctrl-C while `write` runs a DuckDB query


class UpperStage(Stage):
    """Reads a `source` stage folder's *.txt files, writes them upper-cased with a suffix."""

    name = "toy-upper"
    config_model = UpperConfig
    upstream_stage = "toy-source"
    code = ("toy_stage_code",)

    def identity(self, config):
        return {"suffix": config.suffix}

    def plan(self, run):
        return [{"index": i, "path": str(p)} for i, p in enumerate(sorted(run.inputs.glob("*.txt")))]

    def run_shard(self, shard, work, config):
        import toy_stage_code  # the "code the stage runs"

        Path(work).mkdir(parents=True, exist_ok=True)
        text = toy_stage_code.transform(Path(shard["path"]).read_text(), config["suffix"])
        out = Path(work) / Path(shard["path"]).name
        out.write_text(text)
        return {"work": str(out)}

    def write(self, run, results):
        outputs = []
        for r in results:
            final = run.staging / Path(r["work"]).name
            Path(r["work"]).rename(final)
            outputs.append(output_record(final, run.staging))
            if run.config.fail:
                raise RuntimeError("failing half-way, as asked")
            if run.config.ctrl_c_in_query:
                query_interrupted_by_ctrl_c()
        return make_manifest(
            self.name, self.identity(run.config), outputs, {"files": len(outputs)}, run.upstream
        )


@pytest.fixture
def toy(tmp_path, monkeypatch):
    code = tmp_path / "code" / "toy_stage_code"
    code.mkdir(parents=True)
    (code / "__init__.py").write_text("def transform(text, suffix):\n    return text.upper() + suffix\n")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    STAGES[UpperStage.name] = UpperStage()
    src = tmp_path / "src"
    src.mkdir()
    for name, text in {"a.txt": "to be", "b.txt": "or not"}.items():
        (src / name).write_text(text)
    outputs = [output_record(p, src) for p in sorted(src.glob("*.txt"))]
    write_manifest(src, make_manifest("toy-source", {}, outputs, {}, None))
    yield {"src": src, "code": code / "__init__.py", "out": tmp_path / "out"}
    del STAGES[UpperStage.name]
    sys.modules.pop("toy_stage_code", None)


def texts(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("*.txt"))}


def test_runs_once_then_is_up_to_date(toy):
    m = run_stage("toy-upper", toy["src"], toy["out"])
    assert texts(toy["out"]) == {"a.txt": "TO BE!", "b.txt": "OR NOT!"}
    assert json.loads((toy["out"] / "manifest.json").read_text())["key"] == m["key"]
    again = run_stage("toy-upper", toy["src"], toy["out"])
    assert again == m  # the same manifest, created_at included: nothing ran


def test_changed_code_config_or_input_runs_again(toy):
    first = run_stage("toy-upper", toy["src"], toy["out"])
    toy["code"].write_text("def transform(text, suffix):\n    return text.title() + suffix + suffix\n")
    sys.modules.pop("toy_stage_code", None)
    code_changed = run_stage("toy-upper", toy["src"], toy["out"])
    assert code_changed["key"] != first["key"]
    assert texts(toy["out"]) == {"a.txt": "To Be!!", "b.txt": "Or Not!!"}
    config_changed = run_stage("toy-upper", toy["src"], toy["out"], {"suffix": "?"})
    assert config_changed["key"] != code_changed["key"] and texts(toy["out"])["a.txt"] == "To Be??"
    (toy["src"] / "a.txt").write_text("to sleep")
    outputs = [output_record(p, toy["src"]) for p in sorted(toy["src"].glob("*.txt"))]
    write_manifest(toy["src"], make_manifest("toy-source", {}, outputs, {}, None))
    input_changed = run_stage("toy-upper", toy["src"], toy["out"], {"suffix": "?"})
    assert (
        input_changed["upstream"] != config_changed["upstream"] and texts(toy["out"])["a.txt"] == "To Sleep??"
    )


def test_the_key_leaves_out_the_output_path_and_engine_settings(toy, tmp_path):
    a = run_stage("toy-upper", toy["src"], tmp_path / "one")
    b = run_stage("toy-upper", toy["src"], tmp_path / "two")
    assert a["key"] == b["key"] and a["digest"] == b["digest"]


def test_a_failure_half_way_leaves_the_previous_output_and_no_staging(toy):
    run_stage("toy-upper", toy["src"], toy["out"])
    before = texts(toy["out"])
    with pytest.raises(RuntimeError, match="half-way"):
        run_stage("toy-upper", toy["src"], toy["out"], {"suffix": "?", "fail": True})
    assert texts(toy["out"]) == before
    assert [p.name for p in toy["out"].parent.iterdir() if p.name.startswith(".tmp-")] == []


def test_duckdb_turns_ctrl_c_into_an_error_and_interrupts_kept_makes_it_an_interrupt_again():
    """Why interrupts_kept exists: DuckDB cancels the query and raises RuntimeError, the
    KeyboardInterrupt is gone (a Ctrl-C'd stage would end Failed, not interrupted)."""
    with pytest.raises(RuntimeError, match=r"^Query interrupted$"):
        query_interrupted_by_ctrl_c()
    with pytest.raises(KeyboardInterrupt) as caught, interrupts_kept():
        query_interrupted_by_ctrl_c()
    assert str(caught.value.__cause__) == "Query interrupted"
    with pytest.raises(RuntimeError, match="half-way"), interrupts_kept():  # other errors pass as they are
        raise RuntimeError("failing half-way")


def test_ctrl_c_in_a_query_of_write_is_an_interrupt_and_leaves_the_previous_output(toy):
    run_stage("toy-upper", toy["src"], toy["out"])
    before = texts(toy["out"])
    with pytest.raises(KeyboardInterrupt) as caught:
        run_stage("toy-upper", toy["src"], toy["out"], {"suffix": "?", "ctrl_c_in_query": True})
    assert str(caught.value.__cause__) == "Query interrupted"
    assert texts(toy["out"]) == before
    assert [p.name for p in toy["out"].parent.iterdir() if p.name.startswith(".tmp-")] == []


def test_leftovers_of_a_dead_run_are_swept_and_a_live_runs_are_kept(toy):
    toy["out"].parent.mkdir(exist_ok=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(dead.stdout)
    dead_dir = toy["out"].parent / f".tmp-out.staging-{dead_pid}-1"
    live_dir = toy["out"].parent / f".tmp-out.staging-{os.getppid()}-2"  # our parent: alive
    other = toy["out"].parent / f".tmp-other.staging-{dead_pid}-3"  # another output's: not ours
    for d in (dead_dir, live_dir, other):
        d.mkdir()
    run_stage("toy-upper", toy["src"], toy["out"])
    assert not dead_dir.exists() and live_dir.exists() and other.exists()


def run_in_flow(stage_name, inputs, out):
    """The same stage through the flow path (tasks on Prefect's thread runner)."""
    from prefect import flow

    from flows.stages import run_stage_in_flow
    from forja import session
    from forja.home import Home

    @flow(name="toy-stage")
    def toy_flow():
        return run_stage_in_flow(stage_name, inputs, out, {}, False)

    # forja's temporary server, stopped when the flow is done: Prefect's own, started for a flow
    # without an API, outlived the test and logged into pytest's closed output at exit
    with session.prefect_api(Home.from_env()):
        return toy_flow()


@pytest.mark.parametrize(
    "runner", [run_stage, pytest.param(run_in_flow, marks=pytest.mark.slow)], ids=["cli", "flow"]
)
def test_an_up_to_date_run_sweeps_the_leftovers_of_dead_runs_too(toy, runner):
    first = runner("toy-upper", toy["src"], toy["out"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_dir = toy["out"].parent / f".tmp-out.staging-{int(dead.stdout)}-1"
    live_dir = toy["out"].parent / f".tmp-out.staging-{os.getppid()}-2"
    for d in (dead_dir, live_dir):
        d.mkdir()
    again = runner("toy-upper", toy["src"], toy["out"])
    assert again["key"] == first["key"] and again.get("changed", False) is False
    assert not dead_dir.exists() and live_dir.exists()


def test_refuses_to_replace_a_file_or_another_folder(toy, tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    with pytest.raises(StageError, match="is a file"):
        run_stage("toy-upper", toy["src"], a_file)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.md").write_text("keep me")
    with pytest.raises(StageError, match="not a toy-upper output folder"):
        run_stage("toy-upper", toy["src"], theirs)
    assert (theirs / "notes.md").read_text() == "keep me" and a_file.read_text() == "mine"


def test_an_edited_output_is_not_up_to_date(toy):
    first = run_stage("toy-upper", toy["src"], toy["out"])
    (toy["out"] / "a.txt").write_text("TAMPERED")
    again = run_stage("toy-upper", toy["src"], toy["out"])
    assert again["created_at"] != first["created_at"] and texts(toy["out"])["a.txt"] == "TO BE!"


def test_stages_are_declared_once_and_found_by_name():
    for name in ("ingest", "clean", "tokenize"):
        stage = get_stage(name)
        assert stage.name == name and isinstance(stage, Stage)
        files = {p.name for p in stage.code_files(stage.config_model())}
        assert {"stage.py", "common.py"} <= files


def test_clean_code_files_cover_every_built_in_rule():
    stage = get_stage("clean")
    files = stage.code_files(stage.config_model())
    sql = Path(__file__).resolve().parents[2] / "tasks" / "sql"
    assert {p for p in sql.glob("*.sql")} <= {p.resolve() for p in files}
