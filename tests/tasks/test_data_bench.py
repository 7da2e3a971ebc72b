"""`forja bench data --sizes ... --compare datatrove`: the parts that do not need datatrove (the
planted corpus, scoring another tool's removals, the side-by-side lines, the interpreter check).
The comparison itself is a benchmark (bench/README.md), run by hand with datatrove in its own venv."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.data_bench import check_datatrove, make_jsonl, score
from bench.data_compare import comparison, dropped_rows

SCHEMA = pa.schema(
    [("doc_id", pa.string()), ("rule", pa.string()), ("dup_of", pa.string()), ("similarity", pa.float64())]
)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[dict]]:
    work = tmp_path_factory.mktemp("bench")
    corpus = make_jsonl(work / "corpus", 200_000)
    rows = [json.loads(line) for line in (work / "corpus" / "planted.jsonl").read_text().splitlines()]
    return work, corpus, rows


def test_the_planted_corpus_is_deterministic_and_lists_its_copies(
    planted: tuple[Path, dict, list[dict]], tmp_path: Path
):
    work, corpus, rows = planted
    assert corpus["bytes"] >= 200_000 and corpus["docs"] == sum(corpus["counts"].values())
    kinds = {k: sum(r["kind"] == k for r in rows) for k in ("exact", "recased", "near")}
    assert kinds == {k: corpus["counts"][k] for k in kinds} and min(kinds.values()) > 0
    assert all(0 <= r["jaccard"] <= 1 for r in rows if r["kind"] == "near")
    again = make_jsonl(tmp_path / "again", 200_000)
    assert again == corpus
    for name in ("corpus.jsonl", "planted.jsonl"):
        assert (tmp_path / "again" / name).read_bytes() == (work / "corpus" / name).read_bytes()


def test_another_tool_s_removals_without_dup_of_are_scored_like_clean_s(
    planted: tuple[Path, dict, list[dict]], tmp_path: Path
):
    work, _, rows = planted
    near = [r for r in rows if r["kind"] == "near"]
    found, missed = near[: len(near) // 2], near[len(near) // 2 :]
    # clean's way: the copy dropped as a near-duplicate of its original; plus one unplanted removal
    forja = [
        {"doc_id": r["doc_id"], "rule": "near_dedup", "dup_of": r["orig"], "similarity": 0.9} for r in found
    ]
    forja.append({"doc_id": "f" * 64, "rule": "near_dedup", "dup_of": "e" * 64, "similarity": 0.85})
    # datatrove's way (dropped_rows): no dup_of, and for half of the pairs it removed the original;
    # its exact-dedup removals are left out (a verbatim copy has its original's doc_id)
    once = {o for o in (r["orig"] for r in near) if sum(x["orig"] == o for x in near) == 1}
    removed = {
        "near_dedup": [r["orig"] if i % 2 and r["orig"] in once else r["doc_id"] for i, r in enumerate(found)]
        + ["f" * 64],
        "exact_dedup": [r["orig"] for r in missed],
        "quality": [],
    }
    for name, table in (("forja", forja), ("datatrove", dropped_rows(removed))):
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.Table.from_pylist(table, SCHEMA), path)
        shutil.rmtree(work / "score-spill", ignore_errors=True)
        got = score(work, 0.8, path)
        # the same planted pairs found, the same one removal that was not planted
        assert got["planted_near"] == len({r["doc_id"] for r in near})
        assert got["recall"] == round(len({r["doc_id"] for r in found}) / got["planted_near"], 4), name
        assert got["false_removals"] == 1, name
        assert got["clean_exact_dedup"] == 0
    # scored on the pairs neither tool's other rules removed: a quality removal in the other tool's file
    gone = [found[0]["doc_id"], missed[0]["orig"]]
    pairs_gone = sum(r["doc_id"] in gone or r["orig"] in gone for r in near)
    other = tmp_path / "other.parquet"
    pq.write_table(pa.Table.from_pylist([{"doc_id": d, "rule": "quality"} for d in gone]), other)
    shared = score(work, 0.8, tmp_path / "forja.parquet", also=other)
    assert shared["planted_near"] == got["planted_near"] - pairs_gone and pairs_gone >= 2
    # a pair whose original near dedup removed as a copy of a third document: found only by the rule
    # of two tools on the same pairs (either document removed), as a tool without dup_of is scored
    r0 = next(r for r in missed if r["orig"] in once)
    third = {"doc_id": r0["orig"], "rule": "near_dedup", "dup_of": "e" * 64, "similarity": 0.9}
    pq.write_table(pa.Table.from_pylist([*forja, third], SCHEMA), tmp_path / "forja.parquet")
    none = tmp_path / "none.parquet"
    pq.write_table(pa.Table.from_pylist([], SCHEMA), none)
    strict, same = (score(work, 0.8, tmp_path / "forja.parquet", also=a) for a in (None, none))
    assert strict["planted_near"] == same["planted_near"] == got["planted_near"]
    n = got["planted_near"]
    assert strict["recall"] == round(len(found) / n, 4) and same["recall"] == round((len(found) + 1) / n, 4)


def test_the_comparison_prints_both_tools_and_the_ratios():
    def run(tool: str, seconds: float, cpu: float, peak: float, recall: float) -> dict:
        dedup = {"recall": recall, "recall_at_threshold": 0.9, "false_removals": 1234}
        return {"tool": tool, "seconds": seconds, "tree_cpu_s": cpu, "peak_tree_rss_mb": peak, "dedup": dedup}

    lines = comparison(
        10_000, run("forja", 4.0, 6.0, 500.0, 0.73), run("datatrove 0.10", 100.0, 150.0, 400.0, 0.61)
    )
    forja, datatrove = lines[1].split(), lines[2].split()
    assert forja[:5] == ["forja", "4.0", "6.0", "2,500", "500"] and forja[-1] == "1,234"
    assert datatrove[2:6] == ["100.0", "150.0", "100", "400"] and datatrove[6] == "0.61"
    assert (
        lines[3]
        == "datatrove / forja: wall time x25.00, CPU x25.00, peak tree RSS x0.80, recall 0.61 vs 0.73"
    )
    assert len(lines) == 4
    shared = {"planted_near": 2000, "planted_near_at_threshold": 1500, "recall_at_threshold": 0.99}
    dt = run("datatrove 0.10", 100.0, 150.0, 400.0, 0.61)
    dt["dedup"]["shared"] = {"forja": {**shared, "recall": 0.8}, "datatrove": {**shared, "recall": 0.9}}
    lines = comparison(10_000, run("forja", 4.0, 6.0, 500.0, 0.73), dt)
    assert lines[4] == (
        "on the same 2,000 planted pairs (1,500 at the threshold) that neither tool's other rules removed, "
        "found when near dedup removed either document: recall forja 0.8 / 0.99, datatrove 0.9 / 0.99"
    )


def test_an_interpreter_without_datatrove_is_named_in_one_line():
    false = shutil.which("false")
    assert false
    with pytest.raises(SystemExit, match=r"cannot import datatrove .*--datatrove-python PATH$"):
        check_datatrove(false)
