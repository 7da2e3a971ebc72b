"""The frozen evaluation set decontaminates the training data with no setting (flows/eval_set.py):
the same inputs keep their clean key after the set is frozen, and a text of the set planted into a
source is dropped the next time clean runs, while the documents the set came from stay."""

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
from helpers import shakespeare_text

from flows.data_report import decontam_metrics
from flows.eval_set import clean_config, freeze
from flows.params import PipelineParams
from lm.fileio import read_json
from tasks.clean import CleanConfig, run_clean
from tasks.clean.decontam import EvalIndex
from tasks.evaluate import EvalConfig, load_eval_texts
from tasks.ingest import IngestConfig, run_ingest
from tasks.stage import get_stage
from tasks.tokenize import TokenizeConfig, run_tokenize

INGEST = IngestConfig(split="blank_line")


def rows(folder):
    m = read_json(folder / "manifest.json")
    return [r for o in m["outputs"] for r in pq.read_table(folder / o["path"]).to_pylist()]


def clean_key(ds, config):
    return get_stage("clean").prepare(ds / "ingest", ds / "clean-key", config).key


def test_a_frozen_text_planted_in_new_data_is_dropped_and_an_unchanged_dataset_keeps_its_key(tmp_path):
    ds = tmp_path / "ds"
    (tmp_path / "a.txt").write_text(shakespeare_text(40_000), encoding="utf-8")
    ingest = run_ingest([str(tmp_path / "a.txt")], ds / "ingest", INGEST)
    first = clean_config(CleanConfig(), ds, ingest)
    assert first["eval_texts"] == []  # nothing frozen yet
    clean = run_clean(ds / "ingest", ds / "clean1", first)
    tokens = run_tokenize(ds / "clean1", ds / "tokens", TokenizeConfig(vocab_size=512, val_fraction=0.2))
    params = PipelineParams(evaluate=EvalConfig(max_bytes=4_000))
    data = {
        "ingest": ingest,
        "clean": {**clean, "out": str(ds / "clean1")},
        "tokens": {"out": str(ds / "tokens")},
    }
    eval_dir = freeze(params, data, ds)
    assert tokens["splits"]["val"]["docs"] > 0

    record = read_json(eval_dir / "manifest.json")["frozen_from"]
    kept_ids = {r["doc_id"] for r in rows(ds / "clean1")}
    texts, _ = load_eval_texts(eval_dir)
    assert record["ingest"] == [ingest["digest"]]
    # the documents the frozen texts came from: each is a kept document holding one of the texts
    assert record["sources"] and set(record["sources"]) <= kept_ids
    by_id = {r["doc_id"]: r["text"] for r in rows(ds / "clean1")}
    assert all(any(t in by_id[d] for t in texts) for d in record["sources"])

    # the same inputs after the set is frozen: the same clean config, hence the same key (Cached)
    again = clean_config(CleanConfig(), ds, ingest)
    assert again == first and clean_key(ds, again) == clean_key(ds, first)

    # a text of the set planted into the source, inside a document of its own
    planted = "Copied out of the evaluation set, word for word: " + texts[0].strip()
    (tmp_path / "b.txt").write_text(planted + "\n", encoding="utf-8")
    grown = run_ingest([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], ds / "ingest", INGEST)
    config = clean_config(CleanConfig(), ds, grown)  # no user setting: the default CleanConfig
    assert [p.rsplit("/", 1)[-1] for p in config["eval_texts"]] == ["eval.jsonl"]
    m = run_clean(ds / "ingest", ds / "clean2", config)
    planted_id = hashlib.sha256(planted.encode()).hexdigest()
    kept = {r["doc_id"] for r in rows(ds / "clean2")}
    assert planted_id not in kept
    dropped = pq.read_table(ds / "clean2" / "dropped.parquet").to_pylist()
    assert [d["reason"] for d in dropped if d["doc_id"] == planted_id] == ["eval_overlap"]
    assert set(record["sources"]) <= kept  # the validation documents the set came from stay
    assert m["counts"]["dropped"]["decontaminate"] >= 1
    assert m["counts"]["eval_sources"] == len(record["sources"])
    metrics = decontam_metrics(m)
    assert metrics["data.decontaminated"] == m["counts"]["dropped"]["decontaminate"]
    assert metrics["data.eval_overlap"] >= metrics["data.decontaminated"] + len(record["sources"])

    # why sources are named by id: holding every n-gram of a frozen text, the planted document
    # would pass for a source if that were decided per document
    legacy = EvalIndex.build(texts, [str(i) for i in range(len(texts))], [True] * len(texts), 13)
    assert legacy.overlap(pa.array([planted])).field("source").to_pylist() == [True]
