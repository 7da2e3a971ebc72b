"""User rule files (`CleanConfig.rules_dir`): they run among the built-in rules by number prefix,
can be switched off, show in report.json, and a bad one fails before any work, naming the file.

Every test writes real rule files and a real ingest folder and runs the real DuckDB pipeline.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from support import drop_dac_privileges

from lm.fileio import read_json
from tasks.clean import CleanConfig, rule_files, run_clean
from tasks.common import make_manifest, write_manifest, write_parquet

SQL_DIR = Path(__file__).resolve().parents[2] / "tasks" / "sql"
NO_DEDUP = {"exact_dedup": False, "near_dedup": False, "quality": False}

NO_LOREM = """-- kind: filter
-- Drop placeholder text. Anything that holds "lorem ipsum" is filler.
SELECT *, CASE WHEN contains(lower(text), 'lorem ipsum') THEN 'lorem' END AS reason
FROM input
"""
KEEP = [
    "The quick brown fox jumps over the lazy dog, twice.",
    "A plain sentence that no rule should touch at all.",
]
LOREM = [
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "Some text, then lorem ipsum as filler for the rest.",
]


def make_ingest(folder: Path, texts: list[str]) -> Path:
    """An ingest-stage output folder with one Parquet part of `texts`, and its manifest."""
    (folder / "data").mkdir(parents=True)
    table = pa.table(
        {
            "doc_id": [hashlib.sha256(t.encode()).hexdigest() for t in texts],
            "source": ["test"] * len(texts),
            "path": ["test-0.txt"] * len(texts),
            "offset": pa.array(range(len(texts)), pa.int64()),
            "text": pa.array(texts, pa.string()),
        }
    )
    rec = write_parquet(table, folder / "data" / "part-00000.parquet")
    write_manifest(folder, make_manifest("ingest", {}, [{**rec, "path": f"data/{rec['path']}"}], {}))
    return folder


def rules_dir(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def texts_out(out: Path) -> list[str]:
    manifest = read_json(out / "manifest.json")
    return sorted(
        t for o in manifest["outputs"] for t in pq.read_table(out / o["path"]).column("text").to_pylist()
    )


def rule_order(manifest: dict) -> list[str]:
    return [r["rule"] for r in manifest["report"]["rules"]]


# --------------------------------------------------------------------------- a good rule


def test_user_filter_drops_its_rows_and_is_reported(tmp_path: Path):
    ing = make_ingest(tmp_path / "in", KEEP + LOREM)
    config = CleanConfig(
        rules_dir=rules_dir(tmp_path / "rules", {"045_no_lorem.sql": NO_LOREM}), rules=NO_DEDUP
    )
    m = run_clean(ing, tmp_path / "out", config)
    assert texts_out(tmp_path / "out") == sorted(KEEP)
    entry = next(r for r in read_json(tmp_path / "out" / "report.json")["rules"] if r["rule"] == "no_lorem")
    first = min(LOREM, key=lambda t: hashlib.sha256(t.encode()).hexdigest())  # examples in doc_id order
    assert entry == {
        "rule": "no_lorem",
        "kind": "filter",
        "file": "rules_dir/045_no_lorem.sql",
        "description": "Drop placeholder text.",
        "rows_in": 4,
        "rows_out": 2,
        "dropped": 2,
        "reasons": {"lorem": 2},
        "examples": entry["examples"],
    }
    assert entry["examples"][0] == {
        "doc_id": hashlib.sha256(first.encode()).hexdigest(),
        "source": "test",
        "path": "test-0.txt",
        "offset": 2 + LOREM.index(first),
        "reason": "lorem",
        "text": first,
    }
    assert len(entry["examples"]) == 2
    assert m["counts"]["dropped"]["no_lorem"] == 2
    dropped = pq.read_table(tmp_path / "out" / "dropped.parquet").to_pylist()
    assert sorted(d["offset"] for d in dropped if d["rule"] == "no_lorem") == [2, 3]


def test_user_rules_run_among_the_built_ins_by_number(tmp_path: Path):
    # 045 marks the filler (a map rule); 065 drops what is marked: it only works if 045 ran first
    mark = "-- kind: map\n-- Mark filler.\nSELECT * REPLACE (replace(text, 'ipsum', 'IPSUM') AS text) FROM input\n"
    drop = (
        "-- kind: filter\n-- Drop marked filler.\n"
        "SELECT *, CASE WHEN contains(text, 'IPSUM') THEN 'marked' END AS reason FROM input\n"
    )
    first = "-- kind: map\n-- Runs first.\nSELECT * FROM input\n"
    d = rules_dir(
        tmp_path / "rules", {"065_drop_marked.sql": drop, "045_mark.sql": mark, "005_first.sql": first}
    )
    ing = make_ingest(tmp_path / "in", KEEP + LOREM)
    m = run_clean(ing, tmp_path / "out", CleanConfig(rules_dir=d))
    assert rule_order(m) == [
        "first", "mojibake", "control_chars", "nfc", "whitespace", "mark", "pii", "length", "drop_marked",
        "language", "quality", "decontaminate", "exact_dedup", "near_dedup",
    ]  # fmt: skip
    assert texts_out(tmp_path / "out") == sorted(KEEP)
    assert next(r for r in m["report"]["rules"] if r["rule"] == "mark")["changed"] == 2
    assert [p.name for p in rule_files(CleanConfig(rules_dir=d))] == [
        "005_first.sql", "010_mojibake.sql", "020_control_chars.sql", "030_nfc.sql", "040_whitespace.sql",
        "045_mark.sql", "050_pii.sql", "060_length.sql", "065_drop_marked.sql", "065_language.sql", "070_quality.sql", "075_decontaminate.sql",
        "080_exact_dedup.sql", "090_near_dedup.sql",
    ]  # fmt: skip
    assert rule_files(CleanConfig(rules_dir=d))[5] == d / "045_mark.sql"
    assert rule_files(CleanConfig())[0] == SQL_DIR / "010_mojibake.sql"


def test_a_user_rule_switched_off_does_nothing(tmp_path: Path):
    ing = make_ingest(tmp_path / "in", KEEP + LOREM)
    d = rules_dir(tmp_path / "rules", {"045_no_lorem.sql": NO_LOREM})
    m = run_clean(ing, tmp_path / "out", CleanConfig(rules_dir=d, rules={**NO_DEDUP, "no_lorem": False}))
    assert texts_out(tmp_path / "out") == sorted(KEEP + LOREM)
    assert "no_lorem" not in rule_order(m)
    assert "045_no_lorem.sql" not in [
        p.name for p in rule_files(CleanConfig(rules_dir=d, rules={"no_lorem": False}))
    ]
    with pytest.raises(ValidationError, match=r"rules: unknown rule\(s\) \['no_lorem'\]"):
        CleanConfig(rules={"no_lorem": False})  # without the rules_dir that defines it


def test_identity_carries_the_user_rules_by_content_not_path(tmp_path: Path):
    a = rules_dir(tmp_path / "a", {"045_no_lorem.sql": NO_LOREM})
    b = rules_dir(tmp_path / "b", {"045_no_lorem.sql": NO_LOREM})
    ida, idb = CleanConfig(rules_dir=a).identity(), CleanConfig(rules_dir=b).identity()
    assert ida == idb
    assert ida["user_rules"] == {"045_no_lorem.sql": hashlib.sha256(NO_LOREM.encode()).hexdigest()}
    assert "rules_dir" not in ida
    assert "rules_dir" not in CleanConfig().identity() and "user_rules" not in CleanConfig().identity()
    (b / "045_no_lorem.sql").write_text(NO_LOREM.replace("lorem ipsum", "dolor sit"), encoding="utf-8")
    assert CleanConfig(rules_dir=b).identity() != ida
    # the same rules from another folder give the same output, byte for byte
    ing = make_ingest(tmp_path / "in", KEEP + LOREM)
    m1 = run_clean(ing, tmp_path / "out1", CleanConfig(rules_dir=a, rules=NO_DEDUP))
    c = rules_dir(tmp_path / "c", {"045_no_lorem.sql": NO_LOREM})
    m2 = run_clean(ing, tmp_path / "out2", CleanConfig(rules_dir=c, rules=NO_DEDUP))
    assert m1["digest"] == m2["digest"]


# --------------------------------------------------------------------------- bad rules fail first


BAD_FILES = {
    "no kind line": ("045_no_kind.sql", "SELECT *, NULL AS reason FROM input\n", "first line must be"),
    "unknown kind": ("045_sorter.sql", "-- kind: sort\nSELECT * FROM input\n", "first line must be"),
    "bad file name": ("45-no-lorem.sql", NO_LOREM, "named NNN_<name>.sql"),
    "upper-case name": ("045_NoLorem.sql", NO_LOREM, "named NNN_<name>.sql"),
    "does not parse": (
        "045_typo.sql",
        "-- kind: filter\nSELEC *, NULL AS reason FROM input\n",
        "Parser Error",
    ),
    "does not bind": (
        "045_nosuch.sql",
        "-- kind: filter\nSELECT *, CASE WHEN n_chars > 3 THEN 'x' END AS reason FROM input\n",
        "Binder Error",
    ),
    "unknown function": (
        "045_fn.sql",
        "-- kind: map\nSELECT * REPLACE (nosuchfn(text) AS text) FROM input\n",
        "nosuchfn",
    ),
    "filter without reason": ("045_noreason.sql", "-- kind: filter\nSELECT * FROM input\n", "reason"),
    "map drops columns": (
        "045_narrow.sql",
        "-- kind: map\nSELECT doc_id, text FROM input\n",
        "keep every input column",
    ),
    "unknown variable": (
        "045_var.sql",
        "-- kind: filter\nSELECT *, CASE WHEN length(text) < getvariable('min_charz') THEN 'x' END AS reason FROM input\n",
        r"unknown variable\(s\) \['min_charz'\]",
    ),
    "unchecked variable": (
        "045_var2.sql",
        "-- kind: filter\nSELECT *, CASE WHEN length(text) < getvariable('Min' || 'Chars') THEN 'x' END AS reason FROM input\n",
        "quoted lower-case name",
    ),
    "a corpus kind": ("045_mine.sql", "-- kind: corpus\nSELECT gid FROM input\n", "per-document rule"),
    "after the dedup rules": ("095_late.sql", NO_LOREM, "number it below 080"),
    "a built-in's name": ("045_pii.sql", NO_LOREM, r"'pii' is taken by tasks/sql/050_pii\.sql"),
    "only comments": ("045_empty.sql", "-- kind: map\n-- nothing yet\n", "holds no SQL"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_rule_file_fails_before_any_work_naming_the_file(tmp_path: Path, case: str):
    name, text, problem = BAD_FILES[case]
    d = rules_dir(tmp_path / "rules", {"046_fine.sql": NO_LOREM.replace("no_lorem", "fine"), name: text})
    with pytest.raises(ValidationError, match=problem) as err:
        CleanConfig(rules_dir=d)
    assert str(d / name) in str(err.value)
    ing = make_ingest(tmp_path / "in", KEEP)
    with pytest.raises(ValidationError, match=problem):
        run_clean(ing, tmp_path / "out", {"rules_dir": str(d)})  # as a task or the CLI passes it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "rules"]  # no output, no work folder


def test_a_missing_or_unreadable_rules_dir_is_named(tmp_path: Path):
    with pytest.raises(ValidationError, match=rf"rules_dir: {tmp_path / 'nope'} does not exist"):
        CleanConfig(rules_dir=tmp_path / "nope")
    (tmp_path / "file.sql").write_text(NO_LOREM)
    with pytest.raises(ValidationError, match="is not a folder"):
        CleanConfig(rules_dir=tmp_path / "file.sql")
    d = rules_dir(tmp_path / "rules", {"045_no_lorem.sql": NO_LOREM})
    d.chmod(0)
    try:  # in a child without the capabilities that let root read any folder
        r = subprocess.run(
            [sys.executable, "-c", f"from tasks.clean import CleanConfig; CleanConfig(rules_dir={str(d)!r})"],
            capture_output=True,
            text=True,
            preexec_fn=drop_dac_privileges,
            timeout=120,
        )
    finally:
        d.chmod(0o755)
    assert r.returncode != 0 and f"rules_dir: {d} cannot be read" in r.stderr, r.stderr[-2000:]


# --------------------------------------------------------------------------- rules change: clean again


def test_a_rule_added_or_edited_in_the_same_folder_re_runs_clean_into_the_same_out(tmp_path: Path):
    """The issue's case: a rule file added (or edited) after a first clean; cleaning again into the
    same --out must apply it, not answer "up to date"."""
    ing = make_ingest(tmp_path / "in", KEEP + LOREM)
    rules = rules_dir(tmp_path / "rules", {})
    out = tmp_path / "out"
    config = CleanConfig(rules=NO_DEDUP, rules_dir=rules)
    first = run_clean(ing, out, config)
    assert texts_out(out) == sorted(KEEP + LOREM)
    (rules / "065_no_lorem.sql").write_text(NO_LOREM, encoding="utf-8")
    added = run_clean(ing, out, CleanConfig(rules=NO_DEDUP, rules_dir=rules))
    assert added["key"] != first["key"] and texts_out(out) == sorted(KEEP)
    (rules / "065_no_lorem.sql").write_text(NO_LOREM.replace("lorem ipsum", "quick brown"), encoding="utf-8")
    edited = run_clean(ing, out, CleanConfig(rules=NO_DEDUP, rules_dir=rules))
    assert edited["key"] != added["key"]
    assert texts_out(out) == sorted([KEEP[1], *LOREM])


def test_a_built_in_rule_file_edited_re_runs_clean(tmp_path: Path, monkeypatch):
    """A built-in rule's file is part of the key too: the stage's code files include tasks/sql/."""
    from tasks.stage import get_stage

    stage = get_stage("clean")
    config = CleanConfig()
    files = stage.code_files(config)
    assert {p.name for p in SQL_DIR.glob("*.sql")} <= {p.name for p in files}
    before = stage.key("upstream", config)
    copy = tmp_path / "sql"
    copy.mkdir()
    for p in SQL_DIR.glob("*.sql"):
        (copy / p.name).write_bytes(p.read_bytes())
    (copy / "060_length.sql").write_text((SQL_DIR / "060_length.sql").read_text() + "\n-- edited\n")
    swapped = [copy / p.name if p.parent == SQL_DIR else p for p in files]
    monkeypatch.setattr(type(stage), "code_files", lambda self, cfg: swapped)
    assert stage.key("upstream", config) != before


# --------------------------------------------------------------------------- out of memory


HOG = """-- kind: map
-- Appends the length of a 200 MB string to every text: more than DuckDB's share of 128MB holds.
SELECT * REPLACE (text || (SELECT length(string_agg(x::VARCHAR, ',')) FROM range(30000000) t(x))::VARCHAR AS text)
FROM input
"""


def test_a_stage_out_of_memory_says_which_setting_fixes_it(tmp_path: Path):
    # DuckDB's own advice is SQL (SET memory_limit=...); a user of `forja clean` needs the --set
    ing = make_ingest(tmp_path / "in", KEEP)
    d = rules_dir(tmp_path / "rules", {"045_hog.sql": HOG})
    sets = ["--set", f"rules_dir={d}", "--set", "memory_limit=128MB", "--set", "workers=1"]
    r = subprocess.run(
        [sys.executable, "-m", "forja.cli", "clean", str(ing), "--out", str(tmp_path / "out"), *sets],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "SET memory_limit" not in r.stderr, r.stderr[-3000:]
    assert "part-00000.parquet ran out of memory: Out of Memory Error" in r.stderr, r.stderr[-3000:]
    assert "DuckDB gets 61MiB of memory_limit=128MB" in r.stderr
    assert "--set memory_limit=256MB (in a flow: --set clean.memory_limit=256MB)" in r.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()
