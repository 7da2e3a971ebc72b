"""The language rule (CLD2 on real sentences, the allow-list and its drop counts) and the
decontaminate rule (13-gram overlap with evaluation texts, dropped or only reported, and the
frozen set's own source documents kept)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.langid_samples import SAMPLES, SHORT
from lm.fileio import read_json
from tasks.clean import CleanConfig, run_clean
from tasks.clean.decontam import EvalIndex
from tasks.clean.langid import language_of
from tasks.common import make_manifest, write_manifest, write_parquet

ONLY = {"exact_dedup": False, "near_dedup": False, "quality": False}


def make_ingest(folder: Path, texts: list[str]) -> Path:
    (folder / "data").mkdir(parents=True)
    table = pa.table(
        {
            "doc_id": [hashlib.sha256(t.encode()).hexdigest() for t in texts],
            "source": ["test"] * len(texts),
            "path": [f"doc-{i}.txt" for i in range(len(texts))],
            "offset": pa.array([0] * len(texts), pa.int64()),
            "text": pa.array(texts, pa.string()),
        }
    )
    rec = write_parquet(table, folder / "data" / "part-00000.parquet")
    write_manifest(folder, make_manifest("ingest", {}, [{**rec, "path": f"data/{rec['path']}"}], {}))
    return folder


def kept(out: Path) -> list[dict]:
    m = read_json(out / "manifest.json")
    return [r for o in m["outputs"] for r in pq.read_table(out / o["path"]).to_pylist()]


def rule(manifest: dict, name: str) -> dict:
    return next(r for r in manifest["report"]["rules"] if r["rule"] == name)


def test_cld2_names_the_language_of_real_documents_and_abstains_rather_than_guess():
    docs = {lang: " ".join(sentences) for lang, sentences in SAMPLES.items()}
    got = language_of(list(docs.values()))
    assert [g["lang"] for g in got] == list(docs)
    assert all(g["score"] >= 0.9 for g in got)
    sentences = [(lang, s) for lang, ss in SAMPLES.items() for s in ss] + list(SHORT.items())
    found = [g["lang"] for g in language_of([s for _, s in sentences])]
    right = sum(f == lang for f, (lang, _) in zip(found, sentences, strict=True))
    assert right >= 0.9 * len(sentences)
    assert {f for f, (lang, _) in zip(found, sentences, strict=True) if f != lang} <= {"und"}
    assert [g["lang"] for g in language_of(["12345 678", "", "x = f(y)"])] == ["und"] * 3


def test_allow_list_keeps_the_languages_named_and_counts_each_drop_by_language(tmp_path):
    texts = [" ".join(s) for s in SAMPLES.values()]
    m = run_clean(
        make_ingest(tmp_path / "in", texts), tmp_path / "out", {"rules": ONLY, "languages": ["fr", "en"]}
    )
    rows = kept(tmp_path / "out")
    assert sorted(r["lang"] for r in rows) == ["en", "fr"]
    assert sorted(r["text"] for r in rows) == sorted(" ".join(SAMPLES[k]) for k in ("en", "fr"))
    assert all(0.9 <= r["lang_score"] <= 1.0 for r in rows)
    lang = rule(m, "language")
    assert lang["dropped"] == 10 and lang["reasons"] == {k: 1 for k in SAMPLES if k not in ("en", "fr")}
    assert lang["languages"] == dict.fromkeys(sorted(SAMPLES), 1)  # what it saw, per language
    assert m["report"]["languages"] == {"en": 1, "fr": 1} == m["counts"]["languages"]  # what was kept
    assert m["counts"]["dropped"]["language"] == 10
    everything = run_clean(tmp_path / "in", tmp_path / "all", {"rules": ONLY})  # empty list: keep all
    assert rule(everything, "language")["dropped"] == 0 and len(kept(tmp_path / "all")) == 12


EVAL = "The committee agreed that the northern bridge would close for repairs during the first two weeks of March."
SHARES_13 = "Town news. THE Committee agreed, that the northern bridge would close for repairs during the holidays, said the mayor."
SHARES_12 = "Town news. The committee agreed that the northern bridge would close for repairs during spring, said the mayor."


def test_a_document_sharing_a_13_gram_with_an_eval_text_is_dropped_and_reported(tmp_path):
    eval_file = tmp_path / "eval.txt"
    eval_file.write_text(EVAL, encoding="utf-8")
    ing = make_ingest(tmp_path / "in", [SHARES_13, SHARES_12, "An unrelated note about the weather today."])
    m = run_clean(ing, tmp_path / "out", {"rules": ONLY, "eval_texts": [str(eval_file)]})
    assert sorted(r["text"] for r in kept(tmp_path / "out")) == sorted(
        [SHARES_12, "An unrelated note about the weather today."]
    )
    d = rule(m, "decontaminate")
    assert (d["dropped"], d["overlap"], d["reasons"]) == (1, 1, {"eval_overlap": 1})
    [ex] = d["examples"]
    assert ex["doc_id"] == hashlib.sha256(SHARES_13.encode()).hexdigest() and ex["path"] == "doc-0.txt"
    assert ex["ngram"] == "the committee agreed that the northern bridge would close for repairs during the"
    assert (ex["eval_text"], ex["shared_ngrams"], ex["dropped"]) == ("eval.txt", 1, True)
    dropped = pq.read_table(tmp_path / "out" / "dropped.parquet").to_pylist()
    assert [(r["path"], r["rule"], r["reason"]) for r in dropped] == [
        ("doc-0.txt", "decontaminate", "eval_overlap")
    ]

    # decontaminate=false: nothing dropped, the overlap still reported
    m2 = run_clean(
        ing, tmp_path / "report-only", {"rules": ONLY, "eval_texts": [str(eval_file)], "decontaminate": False}
    )
    d2 = rule(m2, "decontaminate")
    assert (d2["dropped"], d2["overlap"], m2["counts"]["eval_overlap"]) == (0, 1, 1)
    assert d2["examples"][0]["ngram"] == ex["ngram"] and d2["examples"][0]["dropped"] is False
    assert len(kept(tmp_path / "report-only")) == 3
    # the evaluation file counts by content in the stage's identity, not by its path
    assert CleanConfig(eval_texts=[eval_file]).identity()["eval_texts"] == {
        "eval.txt": hashlib.sha256(EVAL.encode()).hexdigest()
    }


def test_a_frozen_set_keeps_the_documents_its_texts_came_from(tmp_path):
    source = "Every winter the village repaired its nets in the long hall beside the old stone church by the harbour."
    quoting = "A letter said: every winter the village repaired its nets in the long hall beside the old stone church."
    frozen = tmp_path / "eval"
    frozen.mkdir()
    (frozen / "eval.jsonl").write_text(json.dumps({"text": source}) + "\n", encoding="utf-8")
    (frozen / "manifest.json").write_text(json.dumps({"stage": "eval-set"}), encoding="utf-8")
    ing = make_ingest(tmp_path / "in", [source, quoting])
    m = run_clean(ing, tmp_path / "out", {"rules": ONLY, "eval_texts": [str(frozen / "eval.jsonl")]})
    assert [r["text"] for r in kept(tmp_path / "out")] == [source]  # the source stays in (validation)
    d = rule(m, "decontaminate")
    assert (d["dropped"], d["overlap"], d["eval_sources"]) == (1, 2, 1)
    assert {e["path"]: e["eval_source"] for e in d["examples"]} == {"doc-0.txt": True, "doc-1.txt": False}
    # the same text from a plain evaluation file gets no such exception
    plain = EvalIndex.build([source], ["eval.txt"], [False], 13).overlap(pa.array([source, quoting]))
    assert [x["source"] for x in plain.to_pylist()] == [False, False]
