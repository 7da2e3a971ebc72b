"""The data stages' one memory setting: checked at the edge, reaching DuckDB (limit, spill folder,
threads split between worker processes) and the batches clean holds itself, never the output."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from test_clean import make_ingest, near_copy
from test_clean import paragraphs as paragraphs

import tasks.clean.dedup as dedup_module
import tasks.clean.output as output_module
from lm.fileio import read_json, sha256_file
from tasks.clean import CleanConfig, clean_shard, connect, dedup_shards, input_parts, run_clean
from tasks.clean.dedup import keep_first, pair_batch
from tasks.clean.engine import KEY_ORDER
from tasks.clean.output import SPLIT_ROWS_MAX, bucket_bounds, split_rows, write_parts
from tasks.common import duckdb_memory, in_threads, memory_bytes, sql_list, write_parquet
from tasks.ingest import IngestConfig


def test_memory_setting_is_checked_at_the_edge():
    assert memory_bytes("2GB") == 2 * 10**9 and memory_bytes(" 1.5 GiB ") == 3 * 2**29
    for model in (IngestConfig, CleanConfig):
        with pytest.raises(ValidationError, match="memory_limit must be a size such as '512MB'"):
            model(memory_limit="lots")
        with pytest.raises(ValidationError, match="memory_limit '10MB' is too small"):
            model(memory_limit="10MB")
    # an engine setting: it never changes what the stage writes, so not its identity either
    assert "memory_limit" not in CleanConfig(memory_limit="1GB").identity()


def test_memory_limit_and_the_cores_reach_duckdb_shared_between_processes(tmp_path: Path):
    cores = len(os.sched_getaffinity(0))
    for workers, processes, expect_threads in [
        (None, 1, cores),  # all the cores by default
        (None, 2, max(1, cores // 2)),
        (1, 1, 1),  # workers=1: one core
        (4, 2, 2),
    ]:
        cfg = CleanConfig(memory_limit="1GB", workers=workers)
        with connect(cfg, tmp_path, ordered=False, processes=processes) as con:
            limit, threads, spill, ordered = con.execute(
                "SELECT current_setting('memory_limit'), current_setting('threads'), "
                "current_setting('temp_directory'), current_setting('preserve_insertion_order')"
            ).fetchone()
            # DuckDB gets half of the stage's memory, split between the processes running at once
            assert limit == duckdb_memory("1GB", processes).replace("MiB", ".0 MiB")
            assert memory_bytes(limit.replace(" ", "")) == (10**9 // 2 // processes) // 2**20 * 2**20
            assert threads == expect_threads
            assert Path(spill).parent == tmp_path and Path(spill).is_dir() and ordered is False
        assert not Path(spill).exists()  # the spill folder goes with the connection


def test_clean_runs_one_process_per_core_for_large_parts_and_one_for_a_small_corpus(tmp_path: Path):
    from tasks.clean.engine import PROCESS_BYTES, shard_processes

    parts = []
    for i in range(4):
        parts.append(tmp_path / f"part-{i}.parquet")
        with open(parts[-1], "wb") as f:
            f.truncate(PROCESS_BYTES)  # sparse: the size is what counts
    assert shard_processes(parts, CleanConfig(workers=2)) == 2
    assert shard_processes(parts, CleanConfig(workers=8)) == 4  # at most one per part
    assert shard_processes(parts, CleanConfig(workers=1)) == 1
    assert shard_processes(parts[:1], CleanConfig(workers=2)) == 1
    small = tmp_path / "small.parquet"
    small.write_bytes(b"x" * 1000)
    assert shard_processes([small] * 3, CleanConfig(workers=2)) == 1  # not worth an interpreter


def test_keep_first_in_batches_decides_as_in_one_pass():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 400, 3000)
    b = a + rng.integers(1, 50, 3000)
    sim = rng.random(3000)
    whole = keep_first(a, b, sim)
    order = np.lexsort((a, b))
    dropped: set[int] = set()
    parts = [keep_first(a[i], b[i], sim[i], dropped) for i in np.array_split(order, 7)]
    batched = tuple(np.concatenate([p[k] for p in parts]) for k in range(3))
    for w, got in zip(whole, batched, strict=True):
        assert np.array_equal(w, got)
    assert len(whole[0]) and set(whole[0].tolist()) == dropped


def near_copy_groups(paragraphs: list[str], groups: int, size: int) -> list[str]:
    """`groups` texts of 10 paragraphs, each followed by size - 1 near copies of it."""
    docs = []
    for g in range(groups):
        base = " ".join(paragraphs[40 * g : 40 * g + 10])
        docs += [base] + [near_copy(base, 40 + k, "xyz"[k % 3]) for k in range(1, size)]
    return docs


def test_tiny_memory_gives_the_same_output_in_bounded_batches(
    tmp_path: Path, paragraphs: list[str], caplog: pytest.LogCaptureFixture
):
    # 12 groups of 30 near copies: thousands of candidate pairs, each with 2 x 512 B of signature
    docs = near_copy_groups(paragraphs, 12, 30)
    ing = make_ingest(tmp_path / "in", [docs[::2], docs[1::2]])
    outs = {}
    caplog.set_level(logging.INFO, logger="forja.clean")
    for mem in ("128MB", "16GB"):
        cfg = CleanConfig(memory_limit=mem, num_perm=512)
        caplog.clear()
        outs[mem] = run_clean(ing, tmp_path / mem, cfg)
        line = next(r.getMessage() for r in caplog.records if "candidate pairs screened" in r.getMessage())
        pairs, batches, size = (int(x) for x in re.findall(r"\d+", line))
        assert size == pair_batch(cfg) and batches == -(-pairs // size)
        if mem == "128MB":  # the signatures of the candidate pairs did not fit one batch
            assert size < pairs and batches > 1
    small, large = (tmp_path / "128MB", tmp_path / "16GB")
    assert outs["128MB"]["counts"]["dropped"]["near_dedup"] >= 12 * 10
    files = [o["path"] for o in read_json(small / "manifest.json")["outputs"]]
    for f in [*files, "dropped.parquet", "report.json"]:
        assert sha256_file(small / f) == sha256_file(large / f), f
    assert outs["128MB"]["digest"] == outs["16GB"]["digest"]


def test_buckets_formed_a_band_at_a_time_decide_as_all_at_once(
    tmp_path: Path, paragraphs: list[str], monkeypatch: pytest.MonkeyPatch
):
    # a corpus too large for DuckDB's share forms its LSH buckets one band per pass (10 GB at 1GB)
    docs = near_copy_groups(paragraphs, 4, 20)
    ing = make_ingest(tmp_path / "in", [docs[::2], docs[1::2]])
    outs = {"all at once": run_clean(ing, tmp_path / "once", CleanConfig())}
    monkeypatch.setattr(dedup_module, "BUCKET_ROW_BYTES", 10**12)
    assert dedup_module.bands_per_pass(CleanConfig(), len(docs), 14) == 1
    outs["a band a time"] = run_clean(ing, tmp_path / "banded", CleanConfig())
    assert outs["a band a time"]["counts"]["dropped"]["near_dedup"] >= 4 * 5
    for f in ["dropped.parquet", "report.json"]:
        assert sha256_file(tmp_path / "once" / f) == sha256_file(tmp_path / "banded" / f), f
    assert outs["all at once"]["digest"] == outs["a band a time"]["digest"]


def test_output_sorted_bucket_by_bucket_is_one_order_by_of_the_corpus(
    tmp_path: Path, paragraphs: list[str], monkeypatch: pytest.MonkeyPatch
):
    # the same texts in two parts: rows sharing a doc_id (dedup off keeps both), which must stay
    # together and in (source, path, offset) order whatever bucket bounds fall near them
    docs = paragraphs[:300]
    ing = make_ingest(tmp_path / "in", [docs[:200], docs[100:300], docs[:50]])
    cfg = CleanConfig(rules={"exact_dedup": False, "near_dedup": False}, part_bytes=15_000)
    work = tmp_path / "work"
    shards = [clean_shard(p, work, cfg) for p in input_parts(ing, cfg)]
    dedup = dedup_shards(shards, work, cfg)
    works = [s["work"] for s in shards]
    digests = {}
    for n, workers in ((1, 2), (4, 1), (4, 2), (40, 2), (40, 1)):  # workers=2: the next bucket sorted ahead
        out, scratch = tmp_path / f"out{n}-{workers}", tmp_path / f"scratch{n}-{workers}"
        out.mkdir()
        w_cfg = cfg.model_copy(update={"workers": workers})
        if workers == 1:  # the split into buckets in batches of 7 rows, not one batch
            monkeypatch.setattr(output_module, "split_rows", lambda *_: 7)
        with connect(w_cfg, work, ordered=False) as con:
            if n > 1:
                assert len(bucket_bounds(con, works, n)) > 1
            parts, total, _ = write_parts(con, works, dedup["output"], out, w_cfg, scratch, n_buckets=n)
        assert not list(scratch.iterdir())  # every bucket file is removed once it is cut
        digests[n, workers] = [p["sha256"] for p in parts]
        assert len(parts) > 3 and total == sum(
            len(t.encode()) for t in docs[:200] + docs[100:300] + docs[:50]
        )
    assert digests[1, 2] == digests[4, 1] == digests[4, 2] == digests[40, 2] == digests[40, 1]
    for i, digest in enumerate(digests[40, 2]):  # row group by row group: what one write of the part gives
        whole = pq.read_table(tmp_path / "out40-2" / f"part-{i:05d}.parquet")
        assert write_parquet(whole, tmp_path / "whole.parquet")["sha256"] == digest
    got = pa.concat_tables(
        [pq.read_table(tmp_path / "out40-2" / f"part-{i:05d}.parquet") for i in range(len(digests[40, 2]))]
    )
    with connect(cfg, work) as con:
        ref = con.sql(
            f'SELECT doc_id, source, path, "offset" FROM read_parquet({sql_list(works)}) '
            f"WHERE _drop IS NULL ORDER BY {KEY_ORDER}, text"
        ).fetchall()
    assert [tuple(r.values()) for r in got.select(["doc_id", "source", "path", "offset"]).to_pylist()] == ref
    assert len(set(got.column("doc_id").to_pylist())) < got.num_rows  # shared doc_ids were there


def test_the_split_into_buckets_reads_about_a_bucket_of_text_a_batch():
    rows = 10**6  # of 1,200 bytes of text each: the bench's corpus
    one_gb, two_gb, least = (
        split_rows(CleanConfig(memory_limit=m), 1200 * rows, rows) for m in ("1GB", "2GB", "128MB")
    )
    assert 20_000 < one_gb < 30_000 and abs(two_gb - 2 * one_gb) <= 1  # 31 MB of text at 1GB
    assert least == 8192  # a row group at least
    assert split_rows(CleanConfig(memory_limit="16GB"), 10 * rows, rows) == SPLIT_ROWS_MAX
    assert split_rows(CleanConfig(), 0, 0) == SPLIT_ROWS_MAX


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_exact_check_runs_in_threads_in_order_reading_ahead_a_bounded_number_of_batches(threads: int):
    read: list[int] = []

    def batches():
        for i in range(50):
            read.append(i)
            yield i

    ahead = []
    for i, got in enumerate(in_threads(lambda x: x * x, batches(), threads)):
        assert got == i * i  # in the items' order, whichever thread finished first
        ahead.append(len(read) - (i + 1))
    assert len(read) == 50
    assert max(ahead) <= 2 * threads - 1  # never the whole input at once
