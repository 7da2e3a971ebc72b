"""The ingest stage on real files: every format and compression, bad input, URLs, incremental runs.

Inputs are written in tmp_path (real .gz/.bz2/.xz/.zst, a real PNG header, a real symlink loop);
URLs are served by a local http.server thread; nothing touches the internet.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import logging
import lzma
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from support import serve_files

from tasks.common import StageError, read_manifest, verify_outputs
from tasks.ingest import (
    DATA_SCHEMA,
    IngestConfig,
    ReadOptions,
    SourceUnavailable,
    commit_ingest,
    ingest_shard,
    new_run_id,
    plan_ingest,
    read_item,
    redact,
    run_ingest,
)
from tasks.ingest import commit as commit_mod
from tasks.ingest import plan as plan_mod
from tasks.ingest import shard as shard_mod
from tasks.ingest.readers.jsonl import LineSplitter
from tasks.ingest.readers.text import TextSplitter

ROOT = Path(__file__).resolve().parents[2]
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
)
FRENCH = (
    "Le café était déjà fermé quand nous sommes arrivés. Les élèves, très déçus, ont dû rentrer "
    "à pied sous la pluie. Où est la bibliothèque ? Ça ne fait rien, nous reviendrons demain."
)
GERMAN_QUOTES = "Die Straße war naß – „Müller“ und Jörg gingen über die Brücke, schnell heim. " * 3


def data_rows(out: Path) -> list[dict]:
    m = read_manifest(out, "ingest")
    return [r for o in m["outputs"] for r in pq.read_table(out / o["path"]).to_pylist()]


def quarantine_rows(out: Path) -> list[dict]:
    m = read_manifest(out, "ingest")
    return [r for o in m["quarantine"]["outputs"] for r in pq.read_table(out / o["path"]).to_pylist()]


def texts(out: Path) -> list[str]:
    return [r["text"] for r in data_rows(out)]


def check_accounting(result: dict) -> None:
    run = result["run"]
    assert run["items"] == run["accepted"] + run["duplicates"] + run["already_known"] + run["quarantined"]
    assert sum(run["quarantine_by_reason"].values()) == run["quarantined"]


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- formats


def test_text_split_modes_offsets_and_columns(tmp_path):
    body = "first para\nstill first\n\n \t\nsecond para\r\n\r\nthird"
    f = write(tmp_path / "in" / "a.txt", body)
    out = tmp_path / "out"
    r = run_ingest([str(f)], out, IngestConfig(split="blank_line"))
    rows = data_rows(out)
    assert [x["text"] for x in rows] == ["first para\nstill first", "second para", "third"]
    raw = f.read_bytes()
    for x in rows:  # offset + n_bytes point back at the document in the file
        assert raw[x["offset"] : x["offset"] + x["n_bytes"]].decode() == x["text"]
        assert x["doc_id"] == __import__("hashlib").sha256(x["text"].encode()).hexdigest()
        assert x["source"] == str(f) and x["path"] == str(f.resolve()) and x["encoding"] == "utf-8"
        assert x["ingested_at"].tzinfo is not None
    assert pq.read_schema(out / r["outputs"][0]["path"]).names == DATA_SCHEMA.names
    check_accounting(r)

    fortunes = write(tmp_path / "in2" / "fortunes", "%\nOne.\n%\n\n%\nTwo,\nlines.\n%\n")
    run_ingest([str(fortunes)], tmp_path / "out2", IngestConfig(split="percent_line"))
    assert texts(tmp_path / "out2") == ["One.", "Two,\nlines."]

    run_ingest([str(f)], tmp_path / "out3", IngestConfig(split="file"))
    assert texts(tmp_path / "out3") == [body]  # a whole file, byte for byte


def test_jsonl_csv_tsv_parquet_by_field_and_column(tmp_path):
    src = tmp_path / "in"
    write(
        src / "a.jsonl",
        json.dumps({"body": "from jsonl", "id": 1}) + "\n\n" + json.dumps({"body": "two"}) + "\n",
    )
    with open(src / "b.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "body"])
        w.writerow([1, "from csv,\nwith a newline inside"])
        w.writerow([2, "csv two"])
    write(src / "c.tsv", "body\tid\ntab separated\t1\n")
    pq.write_table(pa.table({"body": ["from parquet", None], "n": [1, 2]}), src / "d.parquet")
    out = tmp_path / "out"
    r = run_ingest([str(src)], out, IngestConfig(text_field="body", text_column="body"))
    got = {(Path(x["path"]).name, x["offset"]): x["text"] for x in data_rows(out)}
    assert got == {
        ("a.jsonl", 1): "from jsonl",
        ("a.jsonl", 3): "two",  # offsets are 1-based line numbers; the blank line is not an item
        ("b.csv", 2): "from csv,\nwith a newline inside",
        ("b.csv", 4): "csv two",  # the record before spans lines 2-3
        ("c.tsv", 2): "tab separated",
        ("d.parquet", 1): "from parquet",
    }
    assert [(Path(q["path"]).name, q["offset"], q["reason"]) for q in quarantine_rows(out)] == [
        ("d.parquet", 2, "missing_field")
    ]
    check_accounting(r)


def test_every_compression_reads_the_same_documents_once(tmp_path):
    raw = b"alpha doc\n\nbeta doc\n"
    src = tmp_path / "in"
    write(src / "plain.txt", raw)
    write(src / "a.txt.gz", gzip.compress(raw))
    write(src / "b.txt.bz2", bz2.compress(raw))
    write(src / "c.txt.xz", lzma.compress(raw))
    write(src / "d.txt.zst", zstandard.ZstdCompressor().compress(raw))
    write(src / "e.jsonl.zst", zstandard.ZstdCompressor().compress(b'{"text": "alpha doc"}\n'))
    out = tmp_path / "out"
    r = run_ingest([str(src)], out, IngestConfig(split="blank_line"))
    assert sorted(texts(out)) == ["alpha doc", "beta doc"]
    assert r["run"]["items"] == 11 and r["run"]["accepted"] == 2 and r["run"]["duplicates"] == 9
    check_accounting(r)


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_are_quarantined_with_reason_and_counted(tmp_path):
    src = tmp_path / "in"
    write(src / "good.txt", "a good document")
    write(src / "image.png", PNG + bytes(200))
    write(src / "fake.txt", PNG + bytes(200))  # a PNG whatever its name
    write(src / "controls.txt", bytes(range(1, 8)) * 200)
    write(src / "empty.txt", b"")
    write(src / "utf16.txt", "text in UTF-16".encode("utf-16"))
    write(src / "late_nul.txt", b"x" * 20_000 + b"\x00 after the sniffed head")
    write(src / "blank.md", " \n\t\n")
    write(src / "random.txt", bytes((i * 73 + 129) % 127 + 129 for i in range(3000)))  # high bytes only
    write(src / "damaged.txt", ("déjà vu " * 50).encode() + b"\xff\xfe" + "naïve".encode())
    write(
        src / "mixed.jsonl",
        "\n".join(
            [
                json.dumps({"text": "kept one"}),
                "{not json",
                json.dumps(["a", "list"]),
                json.dumps({"title": "no text"}),
                json.dumps({"text": 42}),
                json.dumps({"text": None}),
                json.dumps({"text": "   "}),
                json.dumps({"text": "kept two"}),
            ]
        ),
    )
    write(src / "nocol.csv", "title,body\nx,y\n")
    pq.write_table(pa.table({"text": [1, 2, 3]}), src / "ints.parquet")
    write(src / "broken.parquet", b"PAR1 this is not parquet PAR1")
    (src / "loop").symlink_to("loop")  # a link to itself
    (src / "sub").mkdir()
    (src / "sub" / "up").symlink_to("..")  # a folder link back to an ancestor
    (src / "dangling").symlink_to("does-not-exist")
    out = tmp_path / "out"
    r = run_ingest([str(src)], out)
    assert sorted(texts(out)) == ["a good document", "kept one", "kept two"]
    got = {(Path(q["path"]).name, q["offset"], q["reason"]) for q in quarantine_rows(out)}
    assert got == {
        ("image.png", 0, "binary"),
        ("fake.txt", 0, "binary"),
        ("controls.txt", 0, "binary"),
        ("empty.txt", 0, "empty"),
        ("utf16.txt", 0, "undecodable"),
        ("late_nul.txt", 0, "binary"),
        ("blank.md", 0, "empty"),
        ("random.txt", 0, "undecodable"),
        ("damaged.txt", 0, "undecodable"),
        ("mixed.jsonl", 2, "bad_json"),
        ("mixed.jsonl", 3, "not_object"),
        ("mixed.jsonl", 4, "missing_field"),
        ("mixed.jsonl", 5, "not_string"),
        ("mixed.jsonl", 6, "missing_field"),
        ("mixed.jsonl", 7, "empty"),
        ("nocol.csv", 1, "missing_column"),
        ("ints.parquet", 1, "not_string"),
        ("broken.parquet", 0, "corrupt"),
        ("loop", 0, "symlink_loop"),
        ("up", 0, "symlink_loop"),
        ("dangling", 0, "broken_symlink"),
    }
    for q in quarantine_rows(out):
        assert q["detail"] and q["source"] == str(src)
    run = r["run"]
    assert run["quarantined"] == len(got) and run["accepted"] == 3 and run["items"] == 3 + len(got)
    assert r["counts"]["total"]["quarantined"] == len(got)
    assert r["counts"]["total"]["quarantine_by_reason"]["symlink_loop"] == 2
    assert "items == " in r["counts"]["invariant"]
    check_accounting(r)


def test_truncated_and_corrupt_archives_keep_what_came_before(tmp_path):
    docs = [f"document number {i} " + "x" * 200 for i in range(400)]
    raw = "\n\n".join(docs).encode()
    src = tmp_path / "in"
    gz, zst = gzip.compress(raw), zstandard.ZstdCompressor().compress(raw)
    write(src / "cut.txt.gz", gz[: len(gz) // 2])
    write(src / "cut.txt.zst", zst[: len(zst) // 2])
    lines = "".join(json.dumps({"text": f"line {i} {i * i}"}) + "\n" for i in range(3000)).encode()
    xz = lzma.compress(lines)
    write(src / "cut.jsonl.xz", xz[: len(xz) // 2])
    write(src / "notgzip.txt.gz", b"plain text, not gzip at all")
    out = tmp_path / "out"
    r = run_ingest([str(src)], out, IngestConfig(split="blank_line", read_chunk_bytes=4096))
    q = {Path(x["path"]).name: x for x in quarantine_rows(out)}
    assert q["cut.txt.gz"]["reason"] == "truncated" and q["cut.txt.zst"]["reason"] == "truncated"
    assert q["notgzip.txt.gz"]["reason"] == "corrupt"
    assert q["cut.jsonl.xz"]["reason"] == "truncated"
    n_json = sum(x["path"].endswith(".xz") for x in data_rows(out))
    assert 0 < n_json < 3000 and q["cut.jsonl.xz"]["offset"] == n_json + 1  # the first line lost
    kept = [x for x in data_rows(out) if x["path"].endswith(".gz")]
    assert 0 < len(kept) < len(docs)
    # what was kept is an exact prefix of the documents, and the reject starts where it ends
    assert [x["text"] for x in kept] == docs[: len(kept)]
    assert q["cut.txt.gz"]["offset"] == raw.index(docs[len(kept)].encode())
    assert "before the break were kept" in q["cut.txt.gz"]["detail"]
    check_accounting(r)


def test_unreadable_file_is_quarantined(tmp_path):
    """chmod 000 does not stop root: as root, plan and shard run in a forked child that drops to
    user `nobody` (the same split a flow uses), and the parent commits."""
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="forja-ingest-")) if as_root else tmp_path
    try:
        base.chmod(0o777)
        src = base / "in"
        write(src / "ok.txt", "readable")
        write(src / "secret.txt", "no access").chmod(0)
        write(src / "locked" / "inner.txt", "in a folder nobody may list")
        (src / "locked").chmod(0)
        out, cfg, run_id = base / "out", IngestConfig(), new_run_id()
        if not as_root:
            results = [ingest_shard(s, out, cfg, run_id) for s in plan_ingest([str(src)], cfg)]
        else:
            pid = os.fork()
            if pid == 0:  # child: no pytest machinery from here on, leave with os._exit
                code = 1
                try:
                    os.setgid(65534)
                    os.setuid(65534)
                    res = [ingest_shard(s, out, cfg, run_id) for s in plan_ingest([str(src)], cfg)]
                    (base / "results.json").write_text(json.dumps(res))
                    code = 0
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            results = json.loads((base / "results.json").read_text())
        commit_ingest(out, results, cfg)
        q = quarantine_rows(out)
        assert sorted((Path(x["path"]).name, x["reason"]) for x in q) == [
            ("locked", "unreadable"),
            ("secret.txt", "unreadable"),
        ]
        assert all("ermission denied" in x["detail"] for x in q)
        assert texts(out) == ["readable"]
    finally:
        for p in (base / "in" / "locked", base / "in" / "secret.txt"):
            if p.exists():
                p.chmod(0o700)
        if as_root:
            subprocess.run(["rm", "-rf", str(base)], check=False)


def test_legacy_encodings_are_detected_flagged_and_counted(tmp_path):
    src = tmp_path / "in"
    write(src / "fr.txt", (FRENCH + "\n\n" + FRENCH.upper() + "\n").encode("latin-1"))
    write(src / "de.txt", GERMAN_QUOTES.encode("cp1252"))  # „ “ – exist only in cp1252
    write(src / "utf8.txt", "déjà UTF-8")
    out = tmp_path / "out"
    r = run_ingest([str(src)], out, IngestConfig(split="blank_line"))
    by_text = {x["text"]: x for x in data_rows(out)}
    assert set(by_text) == {FRENCH, FRENCH.upper(), GERMAN_QUOTES, "déjà UTF-8"}
    assert by_text["déjà UTF-8"]["encoding"] == "utf-8"
    assert by_text[GERMAN_QUOTES]["encoding"] == "cp1252"
    assert by_text[FRENCH]["encoding"] in ("cp1252", "iso8859-1", "iso8859-15")
    # n_bytes and doc_id are of the UTF-8 text; offset still points into the original bytes
    assert by_text[FRENCH]["n_bytes"] == len(FRENCH.encode())
    assert by_text[FRENCH.upper()]["offset"] == len(FRENCH.encode("latin-1")) + 2
    assert r["run"]["legacy_encoding"] == 3 and r["counts"]["total"]["legacy_encoding"] == 3


def test_documents_over_the_limit_are_quarantined_and_big_ones_stored_whole(tmp_path):
    big = ("word " * 2_000_000).strip()  # ~10 MB: more than a row group's worth of text
    src = tmp_path / "in"
    write(src / "big.txt", big)
    write(src / "small.txt", "tiny")
    write(src / "lines.jsonl", json.dumps({"text": "y" * 5000}) + "\n" + json.dumps({"text": "ok"}) + "\n")
    out = tmp_path / "out"
    run_ingest([str(src)], out)
    assert sorted(len(t) for t in texts(out)) == [2, 4, 5000, len(big)]
    assert big in texts(out)
    out2 = tmp_path / "out2"
    run_ingest([str(src)], out2, IngestConfig(max_doc_bytes=4096))
    assert sorted(texts(out2)) == ["ok", "tiny"]
    q = {(Path(x["path"]).name, x["offset"], x["reason"]) for x in quarantine_rows(out2)}
    assert q == {("big.txt", 0, "too_large"), ("lines.jsonl", 1, "too_large")}


# --------------------------------------------------------------------------- sources


def test_missing_sources_fail_before_any_work(tmp_path):
    out = tmp_path / "out"
    good = write(tmp_path / "good.txt", "fine")
    for bad, words in [
        (str(tmp_path / "nope.txt"), "does not exist"),
        (str(tmp_path / "*.nomatch"), "matches no file"),
        (str(tmp_path / "emptydir"), "holds no files"),
    ]:
        (tmp_path / "emptydir").mkdir(exist_ok=True)
        with pytest.raises(StageError, match=words) as e:
            run_ingest([str(good), bad], out)
        assert bad.split("/")[-1] in str(e.value)
        assert not out.exists()
    with pytest.raises(StageError, match="no sources"):
        run_ingest([], out)


def test_folders_globs_several_sources_hidden_files_and_out_inside_source(tmp_path):
    src = tmp_path / "corpus"
    write(src / "a.txt", "doc a")
    write(src / "deep" / "er" / "b.md", "doc b")
    write(src / ".hidden.txt", "hidden doc")
    write(src / ".git" / "config", "[core]")
    other = write(tmp_path / "other" / "c.txt", "doc c")
    out = src / "out"  # the output folder lives inside the source folder
    r = run_ingest([str(src), str(tmp_path / "other" / "*.txt"), str(src / "a.txt")], out)
    assert sorted(texts(out)) == ["doc a", "doc b", "doc c"]
    assert r["run"]["skipped_hidden"] == 2 and r["run"]["skipped_duplicate_inputs"] == 1
    assert r["sources"] == [str(src), str(tmp_path / "other" / "*.txt"), str(src / "a.txt")]
    r2 = run_ingest([str(src)], out)  # out (now holding files) is skipped, not ingested
    assert not r2["changed"] and r2["run"]["skipped_excluded"] == 1
    run_ingest([str(src)], tmp_path / "out_hidden", IngestConfig(include_hidden=True))
    assert "hidden doc" in texts(tmp_path / "out_hidden")
    assert other.exists()


@pytest.fixture()
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    with serve_files(root, "user", "s3cret") as (host, _):
        yield root, host


def test_urls_stream_with_credentials_redacted_everywhere(tmp_path, http_root, caplog):
    root, host = http_root
    write(root / "docs.txt", "web doc one\n\nweb doc two\n")
    write(root / "rows.jsonl.gz", gzip.compress(b'{"text": "gz json over http"}\n'))
    pq.write_table(pa.table({"text": ["parquet over http"]}), root / "t.parquet")
    urls = [f"http://user:s3cret@{host}/{n}" for n in ("docs.txt", "rows.jsonl.gz", "t.parquet")]
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    r = run_ingest(urls, out, IngestConfig(split="blank_line"))
    assert sorted(texts(out)) == ["gz json over http", "parquet over http", "web doc one", "web doc two"]
    assert {x["source"] for x in data_rows(out)} == {
        f"http://***@{host}/{n}" for n in ("docs.txt", "rows.jsonl.gz", "t.parquet")
    }
    assert r["run"]["urls"] == 3
    assert "s3cret" not in caplog.text
    for p in out.rglob("*"):
        if p.is_file():
            assert b"s3cret" not in p.read_bytes(), p

    with pytest.raises(StageError, match=r"\*\*\*@.*does not exist") as e:
        run_ingest([f"http://user:s3cret@{host}/missing.txt"], tmp_path / "o2")
    assert "s3cret" not in str(e.value)
    with pytest.raises(StageError, match="access denied"):
        run_ingest([f"http://{host}/docs.txt"], tmp_path / "o3")


def test_transient_network_errors_raise_for_a_retry(tmp_path, http_root):
    _, host = http_root
    with pytest.raises(SourceUnavailable, match="503") as e:
        run_ingest([f"http://user:s3cret@{host}/fail"], tmp_path / "o1")
    assert isinstance(e.value, ConnectionError) and "s3cret" not in str(e.value)
    # a port this test holds bound but not listening: a connection to it is refused, whatever else runs
    with socket.socket() as closed, pytest.raises(SourceUnavailable):
        closed.bind(("127.0.0.1", 0))
        run_ingest([f"http://127.0.0.1:{closed.getsockname()[1]}/x.txt"], tmp_path / "o2")


def test_redact():
    assert redact("https://u:p@h.io:8080/a/b.txt") == "https://***@h.io:8080/a/b.txt"
    assert redact("https://h.io/a?token=abc&page=2") == "https://h.io/a?token=***&page=2"
    assert redact("/local/path.txt") == "/local/path.txt"


def test_python_docs_is_offline_deterministic_and_imports_nothing(tmp_path):
    out = tmp_path / "out"
    before = set(sys.modules)
    r = run_ingest(["python-docs"], out)
    assert "antigravity" not in sys.modules and "this" not in sys.modules
    assert not {m for m in set(sys.modules) - before if m.startswith(("idlelib", "tkinter", "turtle"))}
    rows = data_rows(out)
    assert 7_000 < len(rows) < 11_000, len(rows)
    assert 1.4e6 < sum(x["n_bytes"] for x in rows) < 2.3e6
    paths = {x["path"] for x in rows}
    assert "python-docs:json.decoder.JSONDecoder" in paths and "python-docs:json" in paths
    assert not any(".test." in p or p.startswith("python-docs:test.") for p in paths)
    assert {x["source"] for x in rows} == {"python-docs"}
    jd = next(x for x in rows if x["path"] == "python-docs:json.decoder.JSONDecoder")
    assert jd["text"].startswith("Simple JSON <https://json.org> decoder") and jd["offset"] > 1
    # deterministic: the same items in the same order, each read the same way again
    shards = plan_ingest(["python-docs"], IngestConfig())
    assert shards == plan_ingest(["python-docs"], IngestConfig())
    items = [it for s in shards for it in s["items"]]
    assert [it["module"] for it in items] == sorted(it["module"] for it in items)
    json_items = [it for it in items if it["module"].startswith("json")]
    again = [bytes(d.data) for it in json_items for d in read_item(it, ReadOptions())]
    assert [x["text"].encode() for x in rows if x["path"].startswith("python-docs:json")] == again
    check_accounting(r)


# --------------------------------------------------------------------------- snapshots


def test_rerun_is_a_no_op_and_new_documents_make_a_new_snapshot(tmp_path, caplog):
    src = tmp_path / "in"
    write(src / "a.txt", "one\n\ntwo\n\none")  # "one" twice: a duplicate within the run
    write(src / "bad.png", PNG)
    out = tmp_path / "out"
    cfg = IngestConfig(split="blank_line")
    r1 = run_ingest([str(src)], out, cfg)
    assert r1["changed"] and r1["snapshot"] == 1
    assert (r1["run"]["accepted"], r1["run"]["duplicates"], r1["run"]["quarantined"]) == (2, 1, 1)
    manifest_bytes = (out / "manifest.json").read_bytes()
    files = sorted(p.relative_to(out) for p in out.rglob("*"))

    caplog.set_level(logging.INFO, logger="forja.ingest")
    unchanged = run_ingest([str(src)], out, cfg)  # the sources' fingerprint is the same: nothing read
    assert (
        unchanged["digest"] == r1["digest"] and "run" not in unchanged and "ingest shard" not in caplog.text
    )
    r2 = run_ingest([str(src)], out, cfg, fresh=True)  # read again anyway: nothing new is stored
    assert not r2["changed"] and r2["digest"] == r1["digest"]
    # "one" again is a repeat within this run; the first "one" and "two" are already stored
    assert (r2["run"]["duplicates"], r2["run"]["already_known"], r2["run"]["quarantined_new"]) == (1, 2, 0)
    assert (out / "manifest.json").read_bytes() == manifest_bytes
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == files
    assert "nothing new" in caplog.text
    assert re.search(r"ingest shard 1/1: 2/2 files, [\d.]+ MB read, [\d.]+ MB/s", caplog.text)
    check_accounting(r2)

    write(src / "b.txt", "three\n\ntwo")
    r3 = run_ingest([str(src)], out, cfg)
    assert r3["changed"] and r3["snapshot"] == 3 - 1
    assert (r3["run"]["accepted"], r3["run"]["duplicates"], r3["run"]["already_known"]) == (1, 2, 2)
    assert sorted(texts(out)) == ["one", "three", "two"]
    assert len(r3["outputs"]) == 2 and r3["outputs"][0] == r1["outputs"][0]
    assert r3["counts"]["total"]["documents"] == 3 and r3["counts"]["total"]["quarantined"] == 1
    assert json.loads((out / "snapshots" / "000001.json").read_bytes())["digest"] == r1["digest"]
    assert (out / "snapshots" / "000002.json").read_bytes() == (out / "manifest.json").read_bytes()
    # the digest is the content's and the config's: the same history replayed later into another
    # folder (other timestamps in the parts) gives it again; another config gives another one
    assert r3["digest"] != r1["digest"]

    def replay(out: Path, config: IngestConfig) -> dict:
        (src / "b.txt").rename(tmp_path / "b.txt")
        run_ingest([str(src)], out, config)
        (tmp_path / "b.txt").rename(src / "b.txt")
        return run_ingest([str(src)], out, config)

    again = replay(tmp_path / "replay", cfg)
    assert [o["sha256"] for o in again["outputs"]] != [o["sha256"] for o in r3["outputs"]]
    assert again["digest"] == r3["digest"]
    assert (
        replay(tmp_path / "other-config", IngestConfig(split="blank_line", shard_files=7))["digest"]
        != r3["digest"]
    )
    verify_outputs(out, read_manifest(out, "ingest"))


def test_shards_commit_in_any_order_with_cross_shard_duplicates(tmp_path):
    src = tmp_path / "in"
    for i in range(6):
        write(src / f"f{i}.txt", f"shared text\n\nunique {i}")
    cfg = IngestConfig(split="blank_line", shard_files=2, part_bytes=10)
    shards = plan_ingest([str(src)], cfg)
    assert len(shards) == 3 and [len(s["items"]) for s in shards] == [2, 2, 2]
    json.dumps(shards)  # small, JSON-able: can cross a task boundary
    out = tmp_path / "out"
    run_id = new_run_id()
    results = [ingest_shard(s, out, cfg, run_id) for s in reversed(shards)]
    with pytest.raises(StageError, match=r"missing \[1\]"):
        commit_ingest(out, [results[0], results[2]], cfg)
    r = commit_ingest(out, results, cfg)
    assert r["run"]["accepted"] == 7 and r["run"]["duplicates"] == 5
    rows = data_rows(out)
    shared = [x for x in rows if x["text"] == "shared text"]
    assert len(shared) == 1 and shared[0]["path"].endswith("f0.txt")  # first in plan order wins
    assert len(r["outputs"]) > 1  # small part_bytes: several parts, all listed
    assert sum(o["rows"] for o in r["outputs"]) == len(rows) == 7
    assert not (out / ".staging").exists()
    again = run_ingest([str(src)], out, cfg)  # repeats count as duplicates, first ones as known
    assert not again["changed"]
    assert (again["run"]["already_known"], again["run"]["duplicates"]) == (7, 5)


def test_the_commit_classifies_in_buckets_as_in_one_query(tmp_path, monkeypatch, caplog):
    """The commit's dedup runs one DuckDB query per hash bucket of doc_ids (its memory bounded by the
    bucket, not the corpus); with 3 rows per bucket it stores the same rows, counts and digests as
    with one bucket: copies across shards and buckets, repeats of an earlier snapshot, quarantine."""

    def history(out: Path) -> list[dict]:
        src = tmp_path / "in"  # the same paths for both, so the same digests
        shutil.rmtree(src, ignore_errors=True)
        for i in range(6):
            write(src / f"f{i}.txt", "\n\n".join(["shared text", f"unique {i}", f"pair {i // 2}"]))
        write(src / "x.png", PNG)
        write(src / "y.png", PNG)
        cfg = IngestConfig(split="blank_line", shard_files=2, part_bytes=10, max_reject_ratio=0.9)
        first = run_ingest([str(src)], out, cfg)
        for i in range(6, 9):  # new documents, repeats of stored ones, and a new unreadable file
            write(src / f"f{i}.txt", "\n\n".join([f"unique {i - 6}", f"unique {i}", "shared text"]))
        write(src / "z.png", PNG)
        second = run_ingest([str(src)], out, cfg)
        return [first, second]

    one = history(tmp_path / "one")
    monkeypatch.setattr(commit_mod, "bucket_rows", lambda memory_limit: 3)
    with caplog.at_level(logging.INFO, logger="forja.ingest"):
        many = history(tmp_path / "many")
    assert re.search(r"classified \d+ rows of data_cls in [4-9] buckets", caplog.text)
    assert [m["digest"] for m in many] == [m["digest"] for m in one]
    assert [m["run"] for m in many] == [m["run"] for m in one]
    assert one[0]["run"]["duplicates"] == 5 + 3  # "shared text" 5 times, each "pair" once
    assert (one[1]["run"]["already_known"], one[1]["run"]["duplicates"], one[1]["run"]["accepted"]) == (
        10,
        14,
        3,
    )

    def rows(out: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "ingested_at"} for r in data_rows(out)]

    assert rows(tmp_path / "many") == rows(tmp_path / "one")
    assert len(quarantine_rows(tmp_path / "many")) == len(quarantine_rows(tmp_path / "one")) == 3


def test_commit_bucket_size_and_rewrite_threads_follow_the_memory_setting():
    # capped: a 10 GB run classifies in buckets of the size a 1 GB one does
    assert commit_mod.bucket_rows("2GB") == commit_mod.MAX_BUCKET_ROWS
    assert 10_000 < commit_mod.bucket_rows("256MB") < commit_mod.MAX_BUCKET_ROWS
    cores = len(os.sched_getaffinity(0))
    assert commit_mod.rewrite_threads("256MB") == 1  # the setting bounds them at 128 MB each
    assert commit_mod.rewrite_threads("64GB") == cores
    assert commit_mod.rewrite_threads("1GB") == min(cores, 2)


@given(st.lists(st.booleans(), min_size=1, max_size=60))
@settings(max_examples=200, deadline=None)
def test_a_rewrite_keeps_exactly_the_kept_rows_as_slices_of_the_row_group(mask):
    import numpy as np

    text = pa.array([f"row {i} " * 40 for i in range(len(mask))])
    table = pa.table({"n": pa.array(range(len(mask)), pa.int64()), "text": text})
    idx = np.flatnonzero(mask)
    if not len(idx):
        return  # a row group with no kept row is not written at all
    kept = commit_mod._rows(table, idx)
    assert kept["n"].to_pylist() == idx.tolist()
    assert kept["text"].to_pylist() == [text[i].as_py() for i in idx]
    data = text.buffers()[2]  # the text's bytes: every slice points into them, none is a copy
    for chunk in kept["text"].chunks:
        assert data.address <= chunk.buffers()[2].address < data.address + data.size


def test_max_reject_ratio_fails_and_leaves_the_manifest_alone(tmp_path):
    src = tmp_path / "in"
    write(src / "good.txt", "fine")
    out = tmp_path / "out"
    run_ingest([str(src)], out)
    before = (out / "manifest.json").read_bytes()
    write(src / "x.png", PNG)
    write(src / "y.png", PNG)
    with pytest.raises(StageError, match=r"2 of 3 input items .*max_reject_ratio=0.5.*rejected-") as e:
        run_ingest([str(src)], out, IngestConfig(max_reject_ratio=0.5))
    assert (out / "manifest.json").read_bytes() == before
    rejected = next((out / "quarantine").glob("rejected-*.parquet"))
    assert str(rejected) in str(e.value)
    assert sorted(Path(p).name for p in pq.read_table(rejected)["path"].to_pylist()) == ["x.png", "y.png"]
    assert not list((out / ".staging").glob("*"))
    r = run_ingest([str(src)], out, IngestConfig(max_reject_ratio=1.0))  # the default never fails
    assert r["run"]["quarantined_new"] == 2


def test_a_crash_keeps_the_previous_snapshot_and_the_next_run_cleans_up(tmp_path, monkeypatch):
    src = tmp_path / "in"
    write(src / "a.txt", "first")
    out = tmp_path / "out"
    r1 = run_ingest([str(src)], out)
    write(src / "b.txt", "second")

    # crash 1: in a shard (the staging folder is left behind)
    def boom(*a, **k):
        raise RuntimeError("killed while reading")

    monkeypatch.setattr(shard_mod, "read_item", boom)
    with pytest.raises(RuntimeError):
        run_ingest([str(src)], out)
    monkeypatch.undo()
    # crash 2: in the commit, after the new parts got their final names, before the manifest
    monkeypatch.setattr(commit_mod, "write_manifest", boom)
    with pytest.raises(RuntimeError):
        run_ingest([str(src)], out)
    monkeypatch.undo()
    assert len(list((out / "data").glob("*.parquet"))) == 2  # an orphan part exists
    assert list((out / ".staging").iterdir())  # leftover staging
    write(out / "data" / ".tmp-part-x.parquet.abc", b"half written")
    m = read_manifest(out, "ingest")  # the previous snapshot is intact and readable
    assert m["digest"] == r1["digest"]
    verify_outputs(out, m)
    assert texts(out) == ["first"]

    r = run_ingest([str(src)], out)
    assert r["changed"] and r["snapshot"] == 2 and sorted(texts(out)) == ["first", "second"]
    assert sorted(p.name for p in (out / "data").iterdir()) == sorted(
        Path(o["path"]).name for o in r["outputs"]
    )
    assert not (out / ".staging").exists()


def test_config_is_validated_with_field_names():
    with pytest.raises(ValidationError, match="split"):
        IngestConfig(split="paragraph")
    with pytest.raises(ValidationError, match="max_reject_ratio"):
        IngestConfig(max_reject_ratio=1.5)
    with pytest.raises(ValidationError, match="text_field"):
        IngestConfig(text_field="  ")
    with pytest.raises(ValidationError, match="extra"):
        IngestConfig(chunk=3)
    assert all(f.description for f in IngestConfig.model_fields.values())
    assert IngestConfig.model_validate({"split": "blank_line"}).split == "blank_line"


# --------------------------------------------------------------------------- splitters


def _reference_split(data: bytes, split: str) -> list[tuple[int, bytes]]:
    """The documents of `data`, computed on the whole buffer at once."""
    sep = re.compile(rb"[ \t\r\f\v]*" if split == "blank_line" else rb"%[ \t\r\f\v]*")
    docs, start, end, pos = [], None, None, 0
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    for line in lines:
        if sep.fullmatch(line):
            if start is not None:
                docs.append((start, data[start:end]))
            start = None
        else:
            start = pos if start is None else start
            end = pos + len(line)
        pos += len(line) + 1
    if start is not None:
        docs.append((start, data[start:end]))
    out = []
    for s, d in docs:
        d = d[:-1] if d.endswith(b"\r") else d
        if re.search(rb"\S", d):
            out.append((s, d))
    return out


def _split_in_chunks(data: bytes, split: str, sizes: list[int]) -> list[tuple[int, bytes]]:
    sp, got, i, k = TextSplitter(split, 1 << 30), [], 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        got += [(o, bytes(d)) for o, d, _ in sp.feed(data[i : i + n])]
        i, k = i + n, k + 1
    got += [(o, bytes(d)) for o, d, _ in sp.finish()]
    return got


pieces = st.lists(
    st.sampled_from([b"a", b"b c", b"\n", b"\n\n", b" ", b"\t", b"\r\n", b"%", b"%\n", b"\n%\n"])
)


@settings(max_examples=300, deadline=None)
@given(
    pieces,
    st.lists(st.integers(1, 9), min_size=1, max_size=5),
    st.sampled_from(["blank_line", "percent_line"]),
)
def test_splitting_does_not_depend_on_chunk_boundaries(parts, sizes, split):
    data = b"".join(parts)
    assert _split_in_chunks(data, split, sizes) == _reference_split(data, split)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"x", b"yz", b"\n", b"\r\n", b"{}"])), st.integers(1, 7))
def test_line_splitter_matches_splitlines(parts, size):
    data = b"".join(parts)
    sp, got = LineSplitter(1 << 30), []
    for i in range(0, len(data), size):
        got += [(n, bytes(d)) for n, d, _ in sp.feed(data[i : i + size])]
    got += [(n, bytes(d)) for n, d, _ in sp.finish()]
    expect = data.split(b"\n")
    if data.endswith(b"\n") or not data:
        expect.pop()
    assert got == list(enumerate(expect, start=1))


def test_digest_is_the_same_for_the_same_content_ingested_at_another_time(tmp_path):
    """ingested_at differs between two ingests of the same files; the snapshot digest does not."""
    src = tmp_path / "src"
    write(src / "a.txt", "alpha\n\nbeta")
    write(src / "b.txt", "gamma")
    cfg = IngestConfig(split="blank_line")
    first = run_ingest([str(src)], tmp_path / "one", cfg)
    time.sleep(0.01)
    second = run_ingest([str(src)], tmp_path / "two", cfg)
    assert first["outputs"][0]["sha256"] != second["outputs"][0]["sha256"]  # the timestamps differ
    assert first["digest"] == second["digest"]


# --------------------------------------------------------------------------- a shard's table of texts


def test_the_shard_table_finds_repeats_as_a_set_does_within_and_across_batches():
    import hashlib
    import random

    from tasks.ingest.seen import SeenTexts

    rng = random.Random(7)
    texts_ = [f"text {rng.randrange(3000)}".encode() for _ in range(20_000)]  # many repeats
    table = SeenTexts(1 << 14)
    got, expected, known = [], [], set()
    i = 0
    while i < len(texts_):
        batch = texts_[i : i + rng.choice([1, 7, 500, 4096])]  # repeats inside batches too
        got += table.first_seen([hashlib.sha256(t).digest() for t in batch]).tolist()
        for t in batch:
            expected.append(t not in known)
            known.add(t)
        i += len(batch)
    assert got == expected
    assert table.size == len(known) <= table.capacity


def test_a_full_table_stores_new_texts_and_leaves_their_repeats_to_the_commit(tmp_path, monkeypatch):
    """Past its load limit a shard's table records no more texts: a new text is still staged (never
    taken for a repeat), its repeats reach the commit, which drops them by rewriting the parts; the
    dataset is the same as with a table that holds everything."""
    from tasks.ingest import seen as seen_mod

    lines = [json.dumps({"text": f"document {i % 1500} " * 3}) for i in range(4000)]
    write(tmp_path / "in" / "c.jsonl", "\n".join(lines) + "\n")
    cfg = IngestConfig(part_bytes=20_000)
    roomy = run_ingest([str(tmp_path / "in")], tmp_path / "roomy", cfg)
    slots = seen_mod.MIN_SLOTS  # records 614 of the 1,500 texts
    monkeypatch.setattr(shard_mod, "table_slots", lambda memory_limit, input_bytes: slots)
    monkeypatch.setattr(shard_mod, "CHECK_DOCS", 100)  # a batch catches its own repeats: small ones
    full = run_ingest([str(tmp_path / "in")], tmp_path / "full", cfg)
    assert roomy["run"]["duplicates_in_shard"] == 2500  # the shard caught every repeat
    assert 0 < full["run"]["duplicates_in_shard"] < 1500  # the commit had the rest to drop
    assert roomy["run"]["duplicates"] == full["run"]["duplicates"] == 2500
    assert roomy["digest"] == full["digest"]
    assert texts(tmp_path / "full") == texts(tmp_path / "roomy")
    assert len(texts(tmp_path / "full")) == 1500


def test_the_shard_table_is_sized_by_the_memory_setting_not_the_corpus():
    from tasks.ingest.seen import SLOT_BYTES, table_slots

    gb = 10**9
    # a 1 GB and a 10 GB file get the same table, within a third of the setting
    assert table_slots(gb, gb) == table_slots(gb, 10 * gb) == 1 << 24
    assert table_slots(gb, 10 * gb) * SLOT_BYTES <= gb / 3
    assert table_slots(2 * gb, 10 * gb) == 2 * table_slots(gb, 10 * gb)
    assert table_slots(gb, 1000) == 1 << 10  # a small shard: a small table


# --------------------------------------------------------------------------- a big file on every core


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"x")), min_size=1, max_size=30),
    last_newline=st.booleans(),
    target=st.integers(1, 120),
    scan=st.integers(1, 50),
)
def test_a_big_file_is_cut_just_after_line_ends_and_knows_its_line_numbers(
    tmp_path_factory, lines, last_newline, target, scan
):
    data = b"\n".join(lines) + b"\n" * last_newline
    if not data:
        return
    path = tmp_path_factory.mktemp("cut") / "big.jsonl"
    path.write_bytes(data)
    ranges = plan_mod.line_ranges(str(path), len(data), target, scan_bytes=scan)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
    for (start, end, line), nxt in zip(ranges, [*ranges[1:], None], strict=True):
        assert start < end and line == data[:start].count(b"\n") + 1
        cut = data.find(b"\n", start + target)  # the first line end at or past target bytes on
        if nxt is None:  # the last stretch: no cut before the end of the file
            assert cut < 0 or cut + 1 >= len(data)
        else:
            assert nxt[0] == end == cut + 1


def test_a_big_jsonl_file_is_read_in_stretches_by_every_core_with_the_same_documents(tmp_path, monkeypatch):
    rows = [json.dumps({"text": f"document {i % 300}" + " word" * (i % 300 % 17)}) for i in range(400)]
    rows[250] = "{not json"
    rows[120:120] = ["", "   "]  # blank lines are no items
    src = write(tmp_path / "big.jsonl", "\n".join(rows) + "\n")
    import tasks.stage

    monkeypatch.setattr(plan_mod, "PROCESS_BYTES", 1)  # a process per shard, however small
    pools: list[int] = []
    real = tasks.stage.map_in_processes
    monkeypatch.setattr(tasks.stage, "map_in_processes", lambda n: pools.append(n) or real(n))
    cut = IngestConfig(shard_bytes=2048, workers=2)
    shards = plan_ingest([str(src)], cut)
    assert len(shards) > 4 and {s["processes"] for s in shards} == {2}
    assert [it["range"][0] for s in shards for it in s["items"]][:2] == [0, shards[0]["items"][0]["range"][1]]

    whole = run_ingest([str(src)], tmp_path / "whole", IngestConfig(workers=1))
    two = run_ingest([str(src)], tmp_path / "two", cut)
    one = run_ingest([str(src)], tmp_path / "one", cut.model_copy(update={"workers": 1}))
    assert pools == [1, 2, 1]  # the stretches were read in two processes
    # the same documents, each with its line in the file; the first of two copies kept
    key = [(r["doc_id"], r["path"], r["offset"]) for r in data_rows(tmp_path / "whole")]
    assert sorted(key) == sorted((r["doc_id"], r["path"], r["offset"]) for r in data_rows(tmp_path / "two"))
    assert max(offset for _, _, offset in key) == 300 + 2  # rows 300.. copy rows 0..; 2 blank lines
    bad = [(r["offset"], r["reason"]) for r in quarantine_rows(tmp_path / "two")]
    assert (
        bad
        == [(r["offset"], r["reason"]) for r in quarantine_rows(tmp_path / "whole")]
        == [(253, "bad_json")]
    )
    for m in (whole, two):
        check_accounting(m)
        assert m["run"]["files"] == 1 and m["run"]["duplicates"] == 100
    # the processes do not change the output: the digest of one is the digest of two
    assert one["digest"] == two["digest"] != whole["digest"]
