"""The clean stage: named SQL rules, the report, dedup, determinism, bad input.

Every test builds a real ingest folder (Parquet parts written with pyarrow + a manifest from
tasks.common), runs the real DuckDB pipeline on it and reads the real output back.
"""

from __future__ import annotations

import ast
import concurrent.futures
import datetime as dt
import hashlib
import itertools
import json
import sysconfig
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ROOT
from pydantic import ValidationError

from lm.errors import DataError
from lm.fileio import read_json, sha256_file
from tasks.clean import (
    CleanConfig,
    Rule,
    connect,
    fix_mojibake,
    load_rules,
    minhash,
    rule_names,
    run_clean,
    text_stats,
)
from tasks.clean.chain import validate_chain
from tasks.common import StageError, make_manifest, write_manifest, write_parquet
from tasks.stage import StageRun, get_stage

SEED = ROOT.parent / "shared" / "seed" / "training-llms-with-transformers.pt.txt"  # real mojibake
ONLY_PER_DOC = {"exact_dedup": False, "near_dedup": False}


def make_ingest(folder: Path, parts: list[list[str | None]], source: str = "test") -> Path:
    """An ingest-stage output folder: one Parquet part per list of texts, and its manifest."""
    (folder / "data").mkdir(parents=True)
    outputs, offset = [], 0
    when = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    for i, texts in enumerate(parts):
        n = len(texts)
        table = pa.table(
            {
                "doc_id": pa.array(
                    [hashlib.sha256(t.encode()).hexdigest() if t is not None else None for t in texts],
                    pa.string(),
                ),
                "source": [source] * n,
                "path": [f"{source}-{i}.txt"] * n,
                "offset": pa.array(range(offset, offset + n), pa.int64()),
                "text": pa.array(texts, pa.string()),
                "n_bytes": pa.array([len(t.encode()) if t else 0 for t in texts], pa.int64()),
                "encoding": ["utf-8"] * n,
                "ingested_at": pa.array([when] * n, pa.timestamp("us", tz="UTC")),
            }
        )
        offset += n
        rec = write_parquet(table, folder / "data" / f"part-{i:05d}.parquet")
        outputs.append({**rec, "path": f"data/{rec['path']}"})
    write_manifest(folder, make_manifest("ingest", {}, outputs, {"docs": offset}))
    return folder


def read_out(out: Path) -> pa.Table:
    manifest = read_json(out / "manifest.json")
    return pa.concat_tables([pq.read_table(out / o["path"]) for o in manifest["outputs"]])


def texts_out(out: Path) -> list[str]:
    return read_out(out).column("text").to_pylist()


def rule_entry(manifest: dict, name: str) -> dict:
    return next(r for r in manifest["report"]["rules"] if r["rule"] == name)


@pytest.fixture(scope="module")
def paragraphs(shakespeare_path: Path) -> list[str]:
    text = shakespeare_path.read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def stdlib_docstrings(limit: int = 1500) -> list[str]:
    """Real docstrings of a few stdlib modules (parsed with ast, never imported)."""
    std = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for name in (
        "json/decoder.py",
        "argparse.py",
        "textwrap.py",
        "pathlib.py",
        "collections/__init__.py",
        "ipaddress.py",
        "decimal.py",
        "_pydecimal.py",
        "fractions.py",
        "statistics.py",
        "shutil.py",
    ):
        path = std / name
        if not path.is_file():
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    docs.append(doc)
    return docs[:limit]


# --------------------------------------------------------------------------- rules and config


def test_rules_are_named_sql_files_in_order():
    rules = load_rules()
    assert [r.name for r in rules] == [
        "mojibake", "control_chars", "nfc", "whitespace", "pii", "length", "language", "quality",
        "decontaminate", "exact_dedup", "near_dedup",
    ]  # fmt: skip
    assert [r.kind for r in rules] == ["map"] * 5 + ["filter"] * 4 + ["corpus", "candidates"]
    for r in rules:
        assert r.path.suffix == ".sql" and r.path.read_text().startswith(f"-- kind: {r.kind}")
        assert r.description.endswith(".")
    assert "min_alpha_share" in next(r for r in rules if r.name == "quality").variables


def test_config_errors_name_the_field():
    with pytest.raises(ValidationError, match="rules: unknown rule"):
        CleanConfig(rules={"spellcheck": True})
    with pytest.raises(ValidationError, match="max_chars"):
        CleanConfig(min_chars=10, max_chars=5)
    with pytest.raises(ValidationError, match="memory_limit"):
        CleanConfig(memory_limit="lots")
    with pytest.raises(ValidationError, match="near_dedup_threshold"):
        CleanConfig(near_dedup_threshold=1.5)
    with pytest.raises(ValidationError, match=r"near_dedup_threshold 0\.99 with num_perm 16"):
        CleanConfig(near_dedup_threshold=0.99, num_perm=16)
    with pytest.raises(ValidationError, match="Extra inputs"):
        CleanConfig(min_charz=3)
    for name, field in CleanConfig.model_fields.items():
        assert field.description, f"{name} needs a description (it becomes a Prefect form)"


def test_broken_rule_file_is_named(tmp_path: Path):
    bad = Rule("broken", "map", tmp_path / "099_broken.sql", "SELECT doc_id FROM input", "Broken.", ())
    typo = Rule(
        "typo", "filter", tmp_path / "098_typo.sql", "SELECT *, nosuchfn(text) AS reason FROM input", ".", ()
    )
    with connect(CleanConfig(), tmp_path) as con:
        with pytest.raises(StageError, match=r"099_broken\.sql"):
            validate_chain(con, [bad])
        with pytest.raises(StageError, match=r"098_typo\.sql"):
            validate_chain(con, [typo])
    assert not list(tmp_path.glob("duckdb-spill-*"))  # the connection's spill folder goes with it


# --------------------------------------------------------------------------- mojibake


def test_mojibake_seed_is_repaired():
    raw = SEED.read_text(encoding="utf-8")
    assert "IntroduÃ§Ã£o" in raw and "capÃtulo" in raw
    fixed = fix_mojibake(raw)
    for word in ("Introdução", "auto-supervisão", "capítulo", "possível", "índice", "saída"):
        assert word in fixed, word
    assert "Ã" not in fixed and "Â©" not in fixed and "Copyright ©" in fixed


def test_mojibake_leaves_real_text_alone():
    for text in ("café» normal é»", "Ação e emoção", "naïve façade", "IRMÃ E MÃE", "plain ascii", "日本語 ✓"):
        assert fix_mojibake(text) == text


def test_mojibake_rule_runs_in_the_pipeline(tmp_path: Path):
    raw = SEED.read_text(encoding="utf-8")
    ing = make_ingest(tmp_path / "in", [[raw, "Nothing to fix here, mate."]])
    m = run_clean(ing, tmp_path / "out", CleanConfig(rules=ONLY_PER_DOC))
    out = texts_out(tmp_path / "out")
    assert any("Introdução" in t and "capítulo" in t for t in out)
    entry = rule_entry(m, "mojibake")
    assert entry["changed"] == 1
    assert "Ã" in entry["examples"][0]["before"] and "Introdução" in entry["examples"][0]["after"]


# --------------------------------------------------------------------------- text maps


def test_text_normalisation_rules(tmp_path: Path):
    decomposed = unicodedata.normalize("NFD", "Crème brûlée, déjà vu.")
    docs = [
        decomposed,
        "tab\tstays; bell\x07 and\x00 nul go; zero\u200bwidth; no\u00a0break; family 👨\u200d👩\u200d👧 stays.",
        "  Windows\r\nline ends   \r\n\r\n\r\n\r\nand a blank run.\t \n",
        "def f():\n    return 1  # indentation and inner  spaces stay",
    ]
    ing = make_ingest(tmp_path / "in", [docs])
    m = run_clean(ing, tmp_path / "out", CleanConfig(rules=ONLY_PER_DOC))
    out = set(texts_out(tmp_path / "out"))
    assert unicodedata.normalize("NFC", decomposed) in out
    assert "tab\tstays; bell and nul go; zerowidth; no break; family 👨\u200d👩\u200d👧 stays." in out
    assert "Windows\nline ends\n\nand a blank run." in out
    assert docs[3] in out
    assert rule_entry(m, "nfc")["changed"] == 1
    assert rule_entry(m, "control_chars")["changed"] == 1
    assert rule_entry(m, "whitespace")["changed"] == 1
    ws = rule_entry(m, "whitespace")["examples"][0]
    assert "⟨U+000D⟩\n" in ws["before"] and "⟨U+000D⟩" not in ws["after"]  # invisible: spelled out
    nfc = rule_entry(m, "nfc")["examples"][0]
    assert "e⟨U+0300⟩" in nfc["before"] and "è" in nfc["after"]


def test_pii_is_redacted_with_typed_placeholders(tmp_path: Path):
    pii = (
        "Mail jane.doe+news@mail.example.co.uk or call +44 20 7946 0958, (555) 123-4567 or "
        "555.123.4567. Hosts 192.168.1.20, 2001:db8::8a2e:370:7334, fe80::1, ::1 and "
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334 are private."
    )
    safe = (
        "Python 3.11 came out in 2022; scores 1999 2000 2001; time 12:30:45; see Example:: below; "
        "dated 2023-01-15; pi is 3.14159."
    )
    ing = make_ingest(tmp_path / "in", [[pii, safe]])
    m = run_clean(ing, tmp_path / "out", CleanConfig(rules=ONLY_PER_DOC))
    out = texts_out(tmp_path / "out")
    assert safe in out
    red = next(t for t in out if t != safe)
    assert red == (
        "Mail <EMAIL> or call <PHONE>, <PHONE> or <PHONE>. Hosts <IPV4>, <IPV6>, <IPV6>, <IPV6> and "
        "<IPV6> are private."
    )
    entry = rule_entry(m, "pii")
    assert entry["changed"] == 1
    assert entry["examples"][0]["before"] is None  # the report never repeats the personal data
    assert "jane" not in json.dumps(m["report"])
    # one type switched off
    m2 = run_clean(
        ing, tmp_path / "out2", CleanConfig(rules={**ONLY_PER_DOC, "quality": False}, pii_types=["email"])
    )
    assert "192.168.1.20" in next(t for t in texts_out(tmp_path / "out2") if "<EMAIL>" in t)
    assert m2["config"]["pii_types"] == ["email"]


def test_a_rule_switched_off_does_nothing(tmp_path: Path):
    docs = ["Write to someone@example.com today.", "#$%^&*(){}[]<>~|" * 5]
    ing = make_ingest(tmp_path / "in", [docs])
    m = run_clean(ing, tmp_path / "out", CleanConfig(rules={"pii": False, "quality": False}))
    assert sorted(texts_out(tmp_path / "out")) == sorted(docs)
    assert {r["rule"] for r in m["report"]["rules"]} == set(rule_names()) - {"pii", "quality"}


# --------------------------------------------------------------------------- quality


def test_text_stats_counts():
    s = text_stats(["Hello wörld  Ünïcode 中文 ...  # x…", "", "a\n\nb.\nb.\n  c  "])
    assert s[0] == {
        "n_chars": 33, "n_space": 8, "n_alpha": 20, "n_words": 7, "n_hash": 1, "n_ellipsis": 2,
        "n_lines": 1, "n_punct_lines": 1, "line_bytes": 42, "dup_line_bytes": 0,
    }  # fmt: skip
    assert all(v == 0 for v in s[1].values())
    assert s[2]["n_lines"] == 4 and s[2]["n_punct_lines"] == 2 and s[2]["dup_line_bytes"] == 2


def test_quality_defaults_keep_shakespeare_paragraphs(tmp_path: Path, paragraphs: list[str]):
    ing = make_ingest(tmp_path / "in", [paragraphs[:3600], paragraphs[3600:]])
    m = run_clean(ing, tmp_path / "out", CleanConfig(rules=ONLY_PER_DOC))
    assert m["counts"]["rows_in"] == len(paragraphs)
    assert m["counts"]["dropped"]["quality"] <= len(paragraphs) // 500  # verse: nearly all kept
    assert m["counts"]["dropped"]["length"] == 0
    assert m["counts"]["rows_out"] >= len(paragraphs) * 0.998


def test_quality_defaults_keep_stdlib_docstrings(tmp_path: Path):
    docs = stdlib_docstrings()
    assert len(docs) > 500
    ing = make_ingest(tmp_path / "in", [docs])
    m = run_clean(ing, tmp_path / "out", CleanConfig(rules=ONLY_PER_DOC))
    assert m["counts"]["dropped"]["quality"] <= len(docs) * 0.01, rule_entry(m, "quality")["examples"]


def test_junk_is_dropped_with_reasons_and_examples(tmp_path: Path, paragraphs: list[str]):
    junk = {
        "alpha_share": ["#$%^&*(){}[]<>~|=+" * 20, "3141592653589793238462643383279502884197"],
        "duplicate_lines": ["Buy cheap watches now!\n" * 50],
        "long_words": [" ".join("".join(chr(97 + (i * j) % 26) for j in range(40)) for i in range(20))],
        "no_punctuation": ["\n".join(f"Menu item {w.strip(',.;:!?')}" for w in paragraphs[7].split()[:30])],
        "symbols": [" ".join(["# heading"] * 10 + ["word ..."] * 5)],
    }
    empty = ["", "   \n\t ", None]
    good = paragraphs[:40]
    docs = good + [t for ts in junk.values() for t in ts] + empty
    ing = make_ingest(tmp_path / "in", [docs])
    m = run_clean(ing, tmp_path / "out", CleanConfig(rules=ONLY_PER_DOC))
    q = rule_entry(m, "quality")
    assert q["reasons"] == {k: len(v) for k, v in junk.items()}
    assert rule_entry(m, "length")["reasons"] == {"empty": 3}
    assert sorted(texts_out(tmp_path / "out")) == sorted(good)
    shown = {e["reason"] for e in q["examples"]}
    assert shown == set(junk)
    assert any(e["text"].startswith("Buy cheap watches now!") for e in q["examples"])
    dropped = pq.read_table(tmp_path / "out" / "dropped.parquet").to_pylist()
    assert len(dropped) == sum(map(len, junk.values())) + 3
    assert {d["rule"] for d in dropped} == {"quality", "length"}


def test_thresholds_reach_the_sql(tmp_path: Path, paragraphs: list[str]):
    docs = paragraphs[:50]
    ing = make_ingest(tmp_path / "in", [docs])
    m = run_clean(ing, tmp_path / "out", CleanConfig(rules=ONLY_PER_DOC, min_chars=200, max_chars=400))
    kept = texts_out(tmp_path / "out")
    assert kept and all(200 <= len(t) <= 400 for t in kept)
    assert set(rule_entry(m, "length")["reasons"]) == {"too_short", "too_long"}
    m2 = run_clean(ing, tmp_path / "out2", CleanConfig(rules=ONLY_PER_DOC, min_alpha_share=0.99))
    assert m2["counts"]["dropped"]["quality"] == len(docs)


# --------------------------------------------------------------------------- dedup


def test_exact_dedup_keeps_the_first_by_doc_id(tmp_path: Path, paragraphs: list[str]):
    base = paragraphs[10] + "\n\n" + paragraphs[11]
    copies = [base, base.upper(), base + "   \n\n\n", unicodedata.normalize("NFD", base)]
    ing = make_ingest(tmp_path / "in", [[copies[0], paragraphs[20], copies[1]], [copies[2], copies[3]]])
    m = run_clean(ing, tmp_path / "out", CleanConfig(rules={"near_dedup": False}))
    assert m["counts"]["dropped"]["exact_dedup"] == 3
    ids = sorted(hashlib.sha256(c.encode()).hexdigest() for c in copies)
    out = read_out(tmp_path / "out")
    assert ids[0] in out.column("doc_id").to_pylist()
    dropped = pq.read_table(tmp_path / "out" / "dropped.parquet").to_pylist()
    assert sorted(d["doc_id"] for d in dropped) == ids[1:]
    assert {d["dup_of"] for d in dropped} == {ids[0]} and {d["reason"] for d in dropped} == {"exact"}
    ex = rule_entry(m, "exact_dedup")["examples"][0]
    assert ex["dup_of"] == ids[0] and ex["kept_text"]


def near_copy(text: str, every: int, suffix: str = "x") -> str:
    words = text.split(" ")
    return " ".join(w + suffix if i % every == every - 1 else w for i, w in enumerate(words))


def test_near_dedup_across_shards(tmp_path: Path, paragraphs: list[str]):
    doc = " ".join(paragraphs[100:108])
    near = [near_copy(doc, 120), near_copy(doc, 90, "y")]  # a few words changed: Jaccard ~0.9
    far = near_copy(doc, 4)  # every 4th word changed: Jaccard well below 0.8
    others = paragraphs[300:320]
    ing = make_ingest(tmp_path / "in", [[doc, *others[:10]], [near[0], far, *others[10:]], [near[1]]])
    m = run_clean(ing, tmp_path / "out")
    group = sorted(hashlib.sha256(t.encode()).hexdigest() for t in [doc, *near])
    ids = read_out(tmp_path / "out").column("doc_id").to_pylist()
    assert group[0] in ids and group[1] not in ids and group[2] not in ids
    assert hashlib.sha256(far.encode()).hexdigest() in ids
    assert len(ids) == 1 + 1 + len(others)
    entry = rule_entry(m, "near_dedup")
    assert entry["dropped"] == 2 and entry["bands"] * entry["rows"] <= entry["num_perm"]
    assert all(0.8 <= e["similarity"] < 1 for e in entry["examples"])
    # a stricter threshold keeps them all
    m2 = run_clean(ing, tmp_path / "out2", CleanConfig(near_dedup_threshold=0.95))
    assert m2["counts"]["dropped"]["near_dedup"] == 0


def test_minhash_estimates_jaccard_and_is_batch_independent(paragraphs: list[str]):
    doc = " ".join(paragraphs[200:210])
    variants = [doc, near_copy(doc, 20), near_copy(doc, 8), near_copy(doc, 3), " ".join(paragraphs[400:410])]
    b, r = minhash.lsh_params(0.8, 128)
    sigs = minhash.signatures_from_blobs(
        minhash.minhash_arrow(pa.array(variants), 128, 5, b, r).field("sig"), 128
    )

    def shingles(t: str) -> set:
        w = t.lower().split()
        return {tuple(w[i : i + 5]) for i in range(len(w) - 4)}

    for v, sig in zip(variants, sigs, strict=True):
        true = len(shingles(doc) & shingles(v)) / len(shingles(doc) | shingles(v))
        est = minhash.similarity(sigs[:1], sig[None])[0]
        assert abs(est - true) < 0.12, (true, est)
    # the same text gets the same signature whatever else is in its batch
    alone = minhash.signatures_from_blobs(
        minhash.minhash_arrow(pa.array([variants[2]]), 128, 5, b, r).field("sig"), 128
    )
    assert np.array_equal(alone[0], sigs[2])
    short = minhash.minhash_arrow(pa.array(["too short", None]), 128, 5, b, r)
    assert short.null_count == 2


def test_the_8_bit_screen_passes_every_pair_the_full_signatures_pass(paragraphs: list[str]):
    # near dedup screens candidate pairs with the stored low byte of each bin, not the full 32 bits
    base = [" ".join(paragraphs[i : i + 6]) for i in range(0, 240, 30)]
    texts = base + [near_copy(t, k, "xyz"[k % 3]) for t in base for k in (3, 8, 20, 40)]
    b, r = minhash.lsh_params(0.8, 128)
    stored = minhash.signatures_from_blobs(
        minhash.minhash_arrow(pa.array(texts), 128, 5, b, r).field("sig"), 128
    )
    wh, wdoc = minhash.word_hashes(pa.array(texts))
    full, _ = minhash.oph_signatures(*minhash.shingle_hashes(wh, wdoc, 5), len(texts), 128)
    assert stored.dtype == np.uint8 and np.array_equal(stored, (full & 0xFF).astype(np.uint8))
    i, j = np.triu_indices(len(texts), 1)
    est8, est32 = minhash.similarity(stored[i], stored[j]), (full[i] == full[j]).mean(axis=1)
    assert (est8 >= est32).all()  # a bin equal in 32 bits is equal in its low byte
    assert (est8 - est32).max() <= 6 / 128 and (est8 - est32).mean() < 0.01  # chance: 1 in 256 bins
    assert ((est32 >= 0.6) & (est32 < 1)).any() and (est8 < 0.1).any()


def shingle_set(t: str, n: int = 5) -> set:
    w = t.lower().split()
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def jaccard(x: str, y: str) -> float:
    a, b = shingle_set(x), shingle_set(y)
    return len(a & b) / len(a | b)


def test_exact_jaccard_is_the_jaccard_of_the_word_shingle_sets(paragraphs: list[str]):
    doc = " ".join(paragraphs[200:206])
    others = [doc, near_copy(doc, 20), near_copy(doc, 7), near_copy(doc, 2), paragraphs[0], "too short"]
    others += [f"{doc} {doc}", f"{near_copy(doc, 5)} {paragraphs[0]} {doc}"]  # shingles seen twice: sets
    got = minhash.exact_jaccard(pa.array([doc] * len(others)), pa.array(others), 5)
    want = [jaccard(doc, o) if shingle_set(o) else 0.0 for o in others]
    assert np.allclose(got, want, rtol=0, atol=1e-12), (got, want)


def test_shingle_sets_compare_as_the_texts_do_through_parquet_and_when_top_bits_collide(
    tmp_path: Path, paragraphs: list[str]
):
    import duckdb

    docs = [" ".join(paragraphs[i : i + 4]) for i in range(0, 120, 4)]
    a = pa.array([docs[i % 7] for i in range(300)] + ["", "too short"])
    b = pa.array([near_copy(docs[i % (7 if i % 2 else 11)], 20 + i % 9) for i in range(300)] + ["", docs[0]])
    want = minhash.exact_jaccard(a, b, 5)
    assert (want > 0.5).any() and (want == 0).any()  # similar pairs and unrelated ones
    # the sets as dedup reads them back: BLOBs of a Parquet file, through DuckDB
    pq.write_table(
        pa.table({"sa": minhash.shingle_sets(a, 5), "sb": minhash.shingle_sets(b, 5)}), tmp_path / "s.parquet"
    )
    back = duckdb.sql(f"SELECT sa, sb FROM read_parquet('{tmp_path / 's.parquet'}')").to_arrow_table()
    assert np.array_equal(minhash.set_jaccard(back["sa"], back["sb"]), want)
    # two hashes of one set equal in their top bits: the binary search cannot tell them apart
    sets = [np.array([6, 7, 2**40], np.uint64), np.array([7, 9], np.uint64)]  # 6 >> 1 == 7 >> 1
    other = [np.array([7, 2**40], np.uint64), np.array([9, 11], np.uint64)]
    blobs = [pa.array([x.tobytes() for x in xs], pa.binary()) for xs in (sets, other)]
    assert minhash.set_jaccard(*blobs).tolist() == [2 / 3, 1 / 3]


def test_the_shingle_sort_orders_by_document_then_hash_whatever_the_document_numbers():
    rng = np.random.default_rng(0)
    sh = rng.integers(0, 2**64 - 1, 5000, dtype=np.uint64)
    for high in (3, 2**16 + 5):  # the radix path (16-bit documents) and np.lexsort beyond it
        doc = np.sort(rng.integers(0, high, 5000))
        order = minhash._by_doc_then_hash(doc, sh)
        want = sorted(range(5000), key=lambda i: (int(doc[i]), int(sh[i])))
        assert order.tolist() == want


def edit(text: str, every: int, at: int, mark: str) -> str:
    return " ".join(w + mark if i % every == at else w for i, w in enumerate(text.split(" ")))


def test_near_dedup_removes_only_verified_duplicates_of_a_kept_document(
    tmp_path: Path, paragraphs: list[str]
):
    """A chain: B is near A, C is near B but not near A. Kept in doc_id order A first, B goes as A's
    duplicate and C stays (a union of the pairs would drop C as A's 'duplicate' too)."""
    a = " ".join(paragraphs[100:110])
    b = c = ""
    for mark in "xyzuvw":  # marks that put A first in doc_id (sha256) order
        b, c = edit(a, 60, 10, mark), edit(edit(a, 60, 10, mark), 60, 40, mark)
        ids = [hashlib.sha256(t.encode()).hexdigest() for t in (a, b, c)]
        if ids[0] == min(ids):
            break
    assert jaccard(a, b) >= 0.8 and jaccard(b, c) >= 0.8 and jaccard(a, c) < 0.8, (
        jaccard(a, b),
        jaccard(b, c),
        jaccard(a, c),
    )
    ing = make_ingest(tmp_path / "in", [[a, *paragraphs[300:305]], [c, b]])
    m = run_clean(ing, tmp_path / "out")
    kept = set(texts_out(tmp_path / "out"))
    assert a in kept and c in kept and b not in kept
    by_id = {hashlib.sha256(t.encode()).hexdigest(): t for t in (a, b, c)}
    dropped = [
        d
        for d in pq.read_table(tmp_path / "out" / "dropped.parquet").to_pylist()
        if d["rule"] == "near_dedup"
    ]
    assert len(dropped) == 1 and by_id[dropped[0]["dup_of"]] == a
    assert dropped[0]["similarity"] == pytest.approx(jaccard(a, b), abs=1e-4)  # measured, not estimated
    entry = rule_entry(m, "near_dedup")
    assert entry["similar_pairs"] == 2 and entry["verified_pairs"] >= 2


@pytest.mark.parametrize(
    ("threshold", "num_perm"), [(0.5, 64), (0.7, 128), (0.8, 128), (0.85, 256), (0.9, 128)]
)
def test_lsh_bands_are_the_ones_datasketch_picks(threshold: float, num_perm: int):
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=minhash.LSH_WEIGHTS)
    assert minhash.lsh_params(threshold, num_perm) == (lsh.b, lsh.r)
    even = MinHashLSH(threshold=threshold, num_perm=num_perm)
    assert minhash.lsh_params(threshold, num_perm, (0.5, 0.5)) == (even.b, even.r)


# --------------------------------------------------------------------------- output contract


def test_output_contract_report_and_counts(tmp_path: Path, paragraphs: list[str]):
    docs = paragraphs[:300] + paragraphs[:20] + ["#$%^&*" * 30, ""]
    ing = make_ingest(tmp_path / "in", [docs[:160], docs[160:]])
    m = run_clean(ing, tmp_path / "out", CleanConfig(part_bytes=10_000))
    out = tmp_path / "out"
    assert m["stage"] == "clean" and m["upstream"] == read_json(ing / "manifest.json")["digest"]
    assert len(m["outputs"]) > 1 and all(o["path"].startswith("part-") for o in m["outputs"])
    for o in m["outputs"] + m["artifacts"]:
        assert sha256_file(out / o["path"]) == o["sha256"]
    table = read_out(out)
    assert table.schema.names[:6] == ["doc_id", "source", "path", "offset", "text", "n_bytes"]
    ids = table.column("doc_id").to_pylist()
    assert ids == sorted(ids)  # ordered by doc_id across parts
    assert table.column("n_bytes").to_pylist() == [len(t.encode()) for t in table.column("text").to_pylist()]
    c = m["counts"]
    assert c["rows_in"] == len(docs) == c["rows_out"] + sum(c["dropped"].values())
    assert c["rows_out"] == table.num_rows and c["bytes_out"] == sum(table.column("n_bytes").to_pylist())
    report = read_json(out / "report.json")
    assert report == m["report"]
    chain = report["rules"]
    assert chain[0]["rows_in"] == len(docs) and chain[-1]["rows_out"] == c["rows_out"]
    for prev, nxt in itertools.pairwise(chain):
        assert prev["rows_out"] == nxt["rows_in"]
    assert "threads" not in m["config"] and "memory_limit" not in m["config"]


def test_same_input_gives_byte_identical_output(tmp_path: Path, paragraphs: list[str]):
    docs = paragraphs[:400] + paragraphs[:30] + [near_copy(" ".join(paragraphs[50:58]), 60)]
    docs += [SEED.read_text(encoding="utf-8"), "x@y.org " * 3, "1234567890" * 5]
    ing = make_ingest(tmp_path / "in", [docs[:150], docs[150:300], docs[300:]])
    m1 = run_clean(ing, tmp_path / "a", CleanConfig(part_bytes=20_000, threads=1))
    m2 = run_clean(ing, tmp_path / "b", CleanConfig(part_bytes=20_000, threads=2))
    assert m1["digest"] == m2["digest"]
    files = [o["path"] for o in m1["outputs"] + m1["artifacts"]]
    assert len(files) > 3
    for f in files:
        assert sha256_file(tmp_path / "a" / f) == sha256_file(tmp_path / "b" / f), f


def test_worker_processes_give_the_same_output(tmp_path: Path, paragraphs: list[str], monkeypatch):
    import tasks.stage
    from tasks.clean import engine

    ing = make_ingest(tmp_path / "in", [paragraphs[:200], paragraphs[150:400], paragraphs[380:500]])
    pools: list[int] = []
    real = tasks.stage.map_in_processes
    monkeypatch.setattr(tasks.stage, "map_in_processes", lambda n: pools.append(n) or real(n))
    one = run_clean(ing, tmp_path / "one", CleanConfig(workers=1))
    monkeypatch.setattr(engine, "PROCESS_BYTES", 1)  # small parts: processes all the same
    two = run_clean(ing, tmp_path / "two", CleanConfig(workers=2))
    assert pools == [1, 2]  # one core in this process; then two processes
    assert one["digest"] == two["digest"] and one["counts"] == two["counts"]
    assert read_json(tmp_path / "one" / "report.json") == read_json(tmp_path / "two" / "report.json")


def test_the_flow_path_gives_the_cli_path_s_key_digest_and_manifest(tmp_path: Path, paragraphs: list[str]):
    """What flows/stages.py does (plan, shards mapped over threads, publish) against run_clean."""
    ing = make_ingest(tmp_path / "in", [paragraphs[:100], paragraphs[90:200]])
    config = CleanConfig()
    ref = run_clean(ing, tmp_path / "ref", config)
    stage = get_stage("clean")
    run = stage.prepare(ing, tmp_path / "out", config)
    assert run.key == ref["key"]
    run.begin()
    shards = stage.plan(run)
    spec = json.loads(json.dumps(run.spec()))  # small, JSON-able dicts cross the task boundary
    work = str(run.staging / "work")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # as a Prefect thread runner would
        results = list(pool.map(lambda s: stage.run_shard(s, work, spec["config"]), shards))
    assert all(set(r) >= {"part", "work", "rows_in", "rows_out", "rules"} for r in results)
    json.dumps(results)
    m = StageRun.from_spec(spec).finish(results)
    assert m["digest"] == ref["digest"] and m["key"] == ref["key"]
    assert m["counts"]["dropped"]["exact_dedup"] == 10
    strip = {"created_at"}
    assert {k: v for k, v in m.items() if k not in strip} == {k: v for k, v in ref.items() if k not in strip}
    assert read_json(tmp_path / "out" / "report.json") == read_json(tmp_path / "ref" / "report.json")


def test_rerun_is_cached_and_a_new_config_replaces_the_output(tmp_path: Path, paragraphs: list[str]):
    ing = make_ingest(tmp_path / "in", [paragraphs[:50]])
    out = tmp_path / "out"
    m1 = run_clean(ing, out)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert run_clean(ing, out) == m1
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    m3 = run_clean(ing, out, CleanConfig(min_chars=100))
    assert m3["digest"] != m1["digest"] and read_json(out / "manifest.json")["digest"] == m3["digest"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


# --------------------------------------------------------------------------- bad input


def test_bad_input_names_the_file(tmp_path: Path, paragraphs: list[str]):
    with pytest.raises(DataError, match=r"manifest\.json is missing"):
        run_clean(tmp_path / "nothing", tmp_path / "out")
    ing = make_ingest(tmp_path / "in", [paragraphs[:5]])
    part = ing / "data" / "part-00000.parquet"
    pq.write_table(pq.read_table(part).drop_columns(["text"]), part)
    with pytest.raises(DataError, match="sha256"):
        run_clean(ing, tmp_path / "out")
    with pytest.raises(DataError, match=r"part-00000\.parquet: missing column\(s\) \['text'\]"):
        run_clean(ing, tmp_path / "out", CleanConfig(verify_input=False))
    part.unlink()
    with pytest.raises(DataError, match=r"part-00000\.parquet is listed .* but missing"):
        run_clean(ing, tmp_path / "out", CleanConfig(verify_input=False))


def test_out_that_is_not_a_clean_output_is_left_alone(tmp_path: Path, paragraphs: list[str]):
    ing = make_ingest(tmp_path / "in", [paragraphs[:5]])
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    with pytest.raises(StageError, match="not a clean output folder"):
        run_clean(ing, out)
    assert (out / "precious.txt").read_text() == "mine"


def test_null_and_empty_rows_are_counted_not_lost(tmp_path: Path, paragraphs: list[str]):
    ing = make_ingest(tmp_path / "in", [[None, "", paragraphs[0], "\u200b\u00a0"]])
    m = run_clean(ing, tmp_path / "out")
    assert m["counts"]["rows_in"] == 4 and m["counts"]["rows_out"] == 1
    assert rule_entry(m, "length")["reasons"] == {"empty": 3}
    assert len(pq.read_table(tmp_path / "out" / "dropped.parquet")) == 3


def test_empty_ingest_gives_an_empty_output(tmp_path: Path):
    ing = make_ingest(tmp_path / "in", [])
    m = run_clean(ing, tmp_path / "out")
    assert m["outputs"] == [] and m["counts"]["rows_in"] == 0 and m["counts"]["rows_out"] == 0


def test_the_report_accounts_for_the_duplicates_ingest_and_clean_removed(
    tmp_path: Path, paragraphs: list[str]
):
    """Byte-identical copies go at ingest, copies that differ in case at clean's exact dedup, edited
    copies at near dedup: the clean report (and its manifest counts) add them up in one place."""
    from tasks.ingest import IngestConfig, run_ingest

    base = " ".join(paragraphs[100:108])
    docs = [base, base, base.upper(), edit(base, 60, 10, "x"), *paragraphs[300:306]]
    docs = [d.replace("\n", " ") for d in docs]  # one document per blank-line paragraph
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("\n\n".join(docs) + "\n")
    run_ingest([str(tmp_path / "src")], tmp_path / "ingest", IngestConfig(split="blank_line"))
    (tmp_path / "src" / "b.txt").write_text("\n\n".join([docs[4], paragraphs[310], paragraphs[310]]) + "\n")
    run_ingest([str(tmp_path / "src")], tmp_path / "ingest", IngestConfig(split="blank_line"))  # snapshot 2
    m = run_clean(tmp_path / "ingest", tmp_path / "out")
    account = read_json(tmp_path / "out" / "report.json")["duplicates"]
    assert account == {
        "ingest_exact": 3,  # base twice, docs[4] in both files, paragraph 310 twice
        "clean_exact": 1,
        "clean_near": 1,
        "removed": 5,
    }
    assert m["counts"]["duplicates"] == account
