"""The tokenize stage: a clean folder in, a token folder that lm/ trains on out.

Every test builds its clean-stage input with real Parquet and a real manifest, trains a real
SentencePiece model (small vocabularies keep it fast) and reads the output back through lm.data.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from lm.data import TokenData, read_header, read_shard
from lm.errors import DataError
from lm.fileio import read_json, sha256_file
from tasks import tokenize
from tasks.common import make_manifest, write_manifest, write_parquet
from tasks.tokenize import (
    StageError,
    TokenizeConfig,
    chunk_text,
    encode_part,
    run_tokenize,
    split_of,
    train_tokenizer,
)

Row = tuple[str | None, str | None]


# --------------------------------------------------------------------------- helpers


def write_clean(folder: Path, parts: list[list[Row]], others: dict[str, pa.Table] | None = None) -> Path:
    """A finished clean-stage folder: one Parquet part per list of (doc_id, text) rows, plus other
    listed files (e.g. rejected rows) that are not documents."""
    folder.mkdir(parents=True, exist_ok=True)
    outputs = []
    for i, rows in enumerate(parts):
        ids = [r[0] for r in rows]
        texts = [r[1] for r in rows]
        table = pa.table(
            {
                "doc_id": pa.array(ids, pa.string()),
                "text": pa.array(texts, pa.string()),
                "n_bytes": pa.array([len((t or "").encode()) for t in texts], pa.int64()),
                "source": ["test"] * len(rows),
                "path": ["test.txt"] * len(rows),
                "offset": pa.array(range(len(rows)), pa.int64()),
            }
        )
        outputs.append(write_parquet(table, folder / f"part-{i:05d}.parquet"))
    for name, table in (others or {}).items():
        outputs.append(write_parquet(table, folder / name))
    write_manifest(folder, make_manifest("clean", {"test": True}, outputs, {"rows": sum(map(len, parts))}))
    return folder


def paragraphs(path: Path, n: int, start: int = 0) -> list[Row]:
    """n distinct documents: the speeches of tinyshakespeare, one per blank-line paragraph."""
    paras = [p + "\n" for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    seen, docs = set(), []
    for p in paras[start:]:
        if p not in seen:
            seen.add(p)
            docs.append((f"speech-{start + len(docs):05d}", p))
        if len(docs) == n:
            break
    return docs


def split_texts(out: Path, split: str) -> list[str]:
    """The decoded text of every EOS-terminated segment of a split, in order."""
    data = TokenData.open(out)
    sp = spm.SentencePieceProcessor(model_file=str(data.tokenizer_path))
    tokens = np.concatenate([np.asarray(s) for s in data.splits[split].shards] or [np.zeros(0, np.int64)])
    if tokens.size:
        assert tokens[-1] == data.eos_id, "every split ends with EOS"
    cuts = np.flatnonzero(tokens == data.eos_id)
    starts = np.concatenate([[0], cuts[:-1] + 1]) if cuts.size else []
    return [sp.decode(tokens[a:b].tolist()) for a, b in zip(starts, cuts, strict=True)]


def small_config(**kw) -> TokenizeConfig:
    return TokenizeConfig(**{"vocab_size": 320, "character_coverage": 1.0, **kw})


# --------------------------------------------------------------------------- chunks and splits


def test_chunks_end_at_paragraphs_then_lines_then_characters():
    a, b, c = "a" * 10, "b" * 10, "c" * 10
    assert chunk_text(f"{a}\n\n{b}\n \n\n{c}", 30) == [f"{a}\n\n{b}\n \n\n", c]
    assert chunk_text(f"{a}\n\n{b}", 12) == [f"{a}\n\n", b]
    long_paragraph = "\n".join(["x" * 20] * 5) + "\n\n" + c
    assert chunk_text(long_paragraph, 64) == [
        "x" * 20 + "\n" + "x" * 20 + "\n" + "x" * 20 + "\n",
        "x" * 20 + "\n" + "x" * 20 + "\n\n",
        c,
    ]
    cyrillic = "ж" * 100  # 2 bytes per character: 65-byte pieces would cut one in half
    pieces = chunk_text(cyrillic, 65)
    assert "".join(pieces) == cyrillic
    assert [len(p.encode()) for p in pieces] == [64, 64, 64, 8]
    assert chunk_text("short", 64) == ["short"]
    assert chunk_text("", 64) == []


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(["a", "b", " ", "\n", "\t", "ж", "€", "𝄞"]), max_size=600),
    limit=st.integers(min_value=64, max_value=200),
)
def test_chunks_join_back_exactly_and_respect_the_limit(text, limit):
    pieces = chunk_text(text, limit)
    assert "".join(pieces) == text
    assert all(0 < len(p.encode()) <= limit for p in pieces)
    assert chunk_text(text, limit) == pieces


def hash_split(doc_id: str, chunk_index: int, val_fraction: float) -> str:
    """The split as documented, written out here: 'val' when the little-endian 64-bit BLAKE2b
    (person b"forja-split") of "doc_id NUL chunk_index", over 2**64, is below val_fraction."""
    key = f"{doc_id}\x00{chunk_index}".encode()
    digest = hashlib.blake2b(key, digest_size=8, person=b"forja-split").digest()
    return "val" if int.from_bytes(digest, "little") / 2**64 < val_fraction else "train"


# speech-00000..00039, chunk 0, val_fraction 0.2 (V: val); the first units are 0.2043, 0.0002, 0.342
SPLITS_AT_0_2 = "TVTTVTTTTTTTTTTTVVTTTTTTTTTTVVTTVTTVTTTT"


def test_split_of_is_the_documented_hash_and_never_changes():
    ids = [f"speech-{i:05d}" for i in range(40)]
    assert "".join("V" if split_of(d, 0, 0.2) == "val" else "T" for d in ids) == SPLITS_AT_0_2
    keys = [(f"doc-{i}", i % 7) for i in range(2_000)]
    assert [split_of(*k, 0.3) for k in keys] == [hash_split(*k, 0.3) for k in keys]


def test_split_of_is_a_stable_hash_with_the_asked_share():
    keys = [(f"doc-{i}", i % 3) for i in range(20_000)]
    val10 = {k for k in keys if split_of(*k, 0.1) == "val"}
    val20 = {k for k in keys if split_of(*k, 0.2) == "val"}
    assert abs(len(val10) / len(keys) - 0.1) < 0.01
    assert val10 < val20, "raising val_fraction only moves chunks from train to val"
    assert all(split_of(*k, 0.0) == "train" for k in keys[:100])
    assert split_of("doc-1", 0, 0.5) == split_of("doc-1", 0, 0.5)


# --------------------------------------------------------------------------- the stage end to end


def test_token_folder_holds_every_document_exactly_once(tmp_path, shakespeare_path, caplog):
    docs = paragraphs(shakespeare_path, 400)
    clean = write_clean(tmp_path / "clean", [docs[:250], docs[250:]])
    out = tmp_path / "tokens"
    cfg = small_config(val_fraction=0.2)
    with caplog.at_level(logging.INFO, logger="forja.tokenize"):
        manifest = run_tokenize(clean, out, cfg)

    # The manifest is both the stage manifest and the token-folder description lm/data.py reads.
    assert manifest == read_json(out / "manifest.json")
    assert manifest["stage"] == "tokenize"
    assert manifest["upstream"] == read_json(clean / "manifest.json")["digest"]
    assert manifest["format"] == "forja-tokens" and manifest["tokenizer"] == "tokenizer.model"
    assert manifest["tokenizer_sha256"] == sha256_file(out / "tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert manifest["vocab_size"] == sp.get_piece_size() == 320
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert manifest["eos_id"] == 2
    listed = {o["path"]: o["sha256"] for o in manifest["outputs"]}
    on_disk = {p.name for p in out.iterdir()} - {"manifest.json"}
    assert set(listed) == on_disk == {"tokenizer.model", "train-00000.bin", "val-00000.bin"}
    assert all(sha256_file(out / p) == h for p, h in listed.items())

    # Every document comes back exactly once, byte for byte, in the split its doc_id hashes to.
    for split in ("train", "val"):
        texts = split_texts(out, split)
        info = manifest["splits"][split]
        expected = [t for d, t in docs if hash_split(d, 0, 0.2) == split]
        assert texts == expected
        assert info["docs"] == info["segments"] == len(expected)
        assert info["bytes"] == sum(len(t.encode()) for t in expected)
        assert info["tokens"] == sum(len(sp.encode(t)) + 1 for t in expected)
        header = read_header(out / info["shards"][0]["path"])
        assert header.n_docs == len(expected) and header.n_tokens == info["tokens"]
    assert 0.1 < manifest["splits"]["val"]["docs"] / len(docs) < 0.3
    assert manifest["counts"]["docs"] == 400 and manifest["counts"]["docs_skipped"] == {}

    data = TokenData.open(out)
    assert data.splits["train"].n_tokens == manifest["splits"]["train"]["tokens"]
    assert any("MB/s" in r.getMessage() for r in caplog.records if r.name == "forja.tokenize")


def test_documents_keep_their_split_when_data_is_added(tmp_path, shakespeare_path):
    old = paragraphs(shakespeare_path, 300)
    new = paragraphs(shakespeare_path, 150, start=1000)
    cfg = small_config(val_fraction=0.25)
    first = tmp_path / "tokens-1"
    run_tokenize(write_clean(tmp_path / "clean-1", [old]), first, cfg)
    # New documents arrive in a new part and mixed into the old one; the old rows are reordered.
    mixed = old[:200] + new[:75]
    random.Random(0).shuffle(mixed)
    second = tmp_path / "tokens-2"
    run_tokenize(
        write_clean(tmp_path / "clean-2", [mixed, new[75:] + old[200:]]),
        second,
        cfg.model_copy(update={"tokenizer": first / "tokenizer.model"}),
    )

    def where(out: Path) -> dict[str, str]:
        return {t: s for s in ("train", "val") for t in split_texts(out, s)}

    before, after = where(first), where(second)
    assert len(before) == 300 and len(after) == 450
    assert all(after[text] == split for text, split in before.items())
    assert 0 < sum(after[t] == "val" for _, t in new) < len(new)


def test_one_large_document_still_gets_a_validation_split(tmp_path, shakespeare_path):
    text = shakespeare_path.read_text(encoding="utf-8")
    clean = write_clean(tmp_path / "clean", [[("tinyshakespeare", text)]])
    out = tmp_path / "tokens"
    manifest = run_tokenize(clean, out, small_config(vocab_size=512, val_fraction=0.1, chunk_bytes=4096))

    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert train["bytes"] + val["bytes"] == len(text.encode())
    assert abs(val["bytes"] / len(text.encode()) - 0.1) < 0.04
    assert train["docs"] == val["docs"] == 1
    val_texts = split_texts(out, "val")
    train_texts = split_texts(out, "train")
    assert len(val_texts) == val["segments"] > 1
    # The pieces are exact slices of the document, cut at blank lines, and together they are all of it.
    assert all(t in text and (t.endswith("\n\n") or text.endswith(t)) for t in val_texts)
    assert sum(map(len, val_texts + train_texts)) == len(text)


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_same_input_and_config_give_byte_identical_output(tmp_path, shakespeare_path, model_type):
    clean = write_clean(tmp_path / "clean", [paragraphs(shakespeare_path, 300)])
    cfg = small_config(model_type=model_type, shard_tokens=4096)
    a = run_tokenize(clean, tmp_path / "a", cfg)
    b = run_tokenize(clean, tmp_path / "b", cfg)
    assert (tmp_path / "a" / "tokenizer.model").read_bytes() == (
        tmp_path / "b" / "tokenizer.model"
    ).read_bytes()
    assert [(o["path"], o["sha256"]) for o in a["outputs"]] == [
        (o["path"], o["sha256"]) for o in b["outputs"]
    ]
    assert len(a["outputs"]) > 3 and a["digest"] == b["digest"]
    c = run_tokenize(clean, tmp_path / "c", cfg.model_copy(update={"seed": 1, "sample_bytes": 20_000}))
    assert c["tokenizer_sha256"] != a["tokenizer_sha256"], "the seed chooses the tokenizer's sample"


def test_shards_are_cut_to_shard_tokens_without_changing_the_stream(tmp_path, shakespeare_path):
    clean = write_clean(
        tmp_path / "clean", [paragraphs(shakespeare_path, 200), paragraphs(shakespeare_path, 200, 500)]
    )
    whole = run_tokenize(clean, tmp_path / "whole", small_config())
    cut = run_tokenize(clean, tmp_path / "cut", small_config(shard_tokens=1024))
    for split in ("train", "val"):
        shards = cut["splits"][split]["shards"]
        sizes = [s["tokens"] for s in shards]
        assert len(shards) == math.ceil(cut["splits"][split]["tokens"] / 1024) > 1
        assert max(sizes) <= 1024 and max(sizes) - min(sizes) <= 1
        joined = np.concatenate([read_shard(tmp_path / "cut" / s["path"]) for s in shards])
        (single,) = whole["splits"][split]["shards"]
        assert np.array_equal(joined, read_shard(tmp_path / "whole" / single["path"]))
        eos = sum(read_header(tmp_path / "cut" / s["path"]).n_docs for s in shards)
        assert eos == cut["splits"][split]["segments"]
    TokenData.open(tmp_path / "cut")


def test_encoding_in_many_batches_gives_the_same_tokens(tmp_path, shakespeare_path, monkeypatch):
    clean = write_clean(tmp_path / "clean", [paragraphs(shakespeare_path, 300)])
    one = run_tokenize(clean, tmp_path / "one", small_config())
    monkeypatch.setattr(tokenize.encode, "ENCODE_BATCH_BYTES", 2000)  # dozens of batches, encoded in flight
    many = run_tokenize(clean, tmp_path / "many", small_config(num_threads=3))
    assert [o["sha256"] for o in many["outputs"]] == [o["sha256"] for o in one["outputs"]]


def test_long_training_lines_are_cut_counted_and_warned(tmp_path, shakespeare_path, caplog):
    beetles = "жук " * 3000  # one 21 kB line in a script found nowhere else in the corpus
    docs = [*paragraphs(shakespeare_path, 100), ("beetles", beetles)]
    clean = write_clean(tmp_path / "clean", [docs])
    cfg = small_config(vocab_size=400, val_fraction=0.0, max_sentence_length=2000)
    with caplog.at_level(logging.WARNING, logger="forja.tokenize"):
        manifest = run_tokenize(clean, tmp_path / "tokens", cfg)
    # chunk_bytes=8192 cuts the line into three chunks, each still longer than 2000 bytes.
    assert manifest["counts"]["long_lines"] == 3
    assert any("max_sentence_length=2000" in r.getMessage() for r in caplog.records)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokens" / "tokenizer.model"))
    pieces = sp.encode("жук жук", out_type=str)
    assert not any(p.startswith("<0x") for p in pieces), f"the tokenizer never saw the line: {pieces}"


def test_bad_rows_are_counted_and_skipped_not_fatal(tmp_path, shakespeare_path, caplog):
    docs = paragraphs(shakespeare_path, 50)
    bad: list[Row] = [("no-text", None), ("empty", ""), (None, "a text without an id\n")]
    rejects = pa.table({"doc_id": ["spam"], "text": ["buy now " * 50], "reason": ["spam"]})
    clean = write_clean(
        tmp_path / "clean", [docs[:20] + bad + docs[20:]], {"rejected-00000.parquet": rejects}
    )
    with caplog.at_level(logging.WARNING, logger="forja.tokenize"):
        manifest = run_tokenize(clean, tmp_path / "tokens", small_config())
    assert manifest["counts"]["docs"] == 50, "the rejected rows the clean stage set aside are not read"
    assert manifest["counts"]["docs_skipped"] == {"empty_text": 2, "missing_doc_id": 1}
    assert any("missing_doc_id" in r.getMessage() and "[22]" in r.getMessage() for r in caplog.records)


def test_a_reused_tokenizer_is_copied_and_recorded(tmp_path, shakespeare_path):
    first = tmp_path / "first"
    a = run_tokenize(write_clean(tmp_path / "c1", [paragraphs(shakespeare_path, 200)]), first, small_config())
    model = first / "tokenizer.model"
    b = run_tokenize(
        write_clean(tmp_path / "c2", [paragraphs(shakespeare_path, 100, 800)]),
        tmp_path / "second",
        TokenizeConfig(tokenizer=model, vocab_size=9999),  # training fields are ignored
    )
    assert (tmp_path / "second" / "tokenizer.model").read_bytes() == model.read_bytes()
    assert b["tokenizer_sha256"] == a["tokenizer_sha256"] and b["vocab_size"] == 320
    assert b["tokenizer_source"] == {"trained": False, "path": str(model)}
    assert b["counts"]["sample_bytes"] == 0


def test_user_defined_symbols_stay_one_piece(tmp_path, shakespeare_path):
    docs = [(d, t.replace("\n\n", "\n<|sep|>\n")) for d, t in paragraphs(shakespeare_path, 100)]
    run_tokenize(
        write_clean(tmp_path / "clean", [docs]),
        tmp_path / "t",
        small_config(user_defined_symbols=["<|sep|>"]),
    )
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "t" / "tokenizer.model"))
    assert sp.encode("a<|sep|>b", out_type=str) == ["a", "<|sep|>", "b"]
    assert sp.encode("x\ny", out_type=str) == ["x", "\n", "y"]


# --------------------------------------------------------------------------- errors name the fix


def test_too_large_vocab_size_says_to_lower_it(tmp_path):
    clean = write_clean(tmp_path / "clean", [[(f"d{i}", f"hello world number {i}\n") for i in range(30)]])
    out = tmp_path / "tokens"
    with pytest.raises(StageError, match=r"vocab_size=5000 .*lower vocab_size to \d+"):
        run_tokenize(clean, out, TokenizeConfig(vocab_size=5000))
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["clean"], "no temporary folder is left behind"


def test_input_problems_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataError, match="forja clean"):
        run_tokenize(tmp_path / "nothing", tmp_path / "out", small_config())
    clean = tmp_path / "clean"
    clean.mkdir()
    rec = write_parquet(pa.table({"doc_id": ["a"], "body": ["text"]}), clean / "part-00000.parquet")
    write_manifest(clean, make_manifest("clean", {}, [rec], {}))
    with pytest.raises(StageError, match=r"part-00000.parquet has no 'text' column"):
        run_tokenize(clean, tmp_path / "out", small_config())
    empty = write_clean(tmp_path / "empty", [[("blank", "")]])
    with pytest.raises(StageError, match="no text to train a tokenizer on"):
        run_tokenize(empty, tmp_path / "out", small_config())
    with pytest.raises(StageError, match=r"tokenizer=.*missing.model is not a file"):
        run_tokenize(clean, tmp_path / "out", TokenizeConfig(tokenizer=tmp_path / "missing.model"))
    (tmp_path / "bogus.model").write_text("not a model")
    with pytest.raises(StageError, match=r"tokenizer=.*bogus.model"):
        run_tokenize(clean, tmp_path / "out", TokenizeConfig(tokenizer=tmp_path / "bogus.model"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("val_fraction", 1.0),
        ("vocab_size", 4),
        ("model_type", "wordpiece"),
        ("chunk_bytes", 10),
        ("user_defined_symbols", ["<x>", "<x>"]),
        ("user_defined_symbols", ["</s>"]),
        ("no_such_field", 1),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValidationError, match=field):
        TokenizeConfig(**{field: value})


def test_every_config_field_is_described():
    for name, field in TokenizeConfig.model_fields.items():
        assert field.description, f"{name} needs a description (it becomes a form field)"


# --------------------------------------------------------------------------- reruns


def test_a_finished_output_is_reused_and_a_changed_one_replaced(tmp_path, shakespeare_path):
    clean = write_clean(tmp_path / "clean", [paragraphs(shakespeare_path, 150)])
    out = tmp_path / "tokens"
    first = run_tokenize(clean, out, small_config())
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert run_tokenize(clean, out, small_config()) == first
    assert (out / "manifest.json").stat().st_mtime_ns == stamp, "an up-to-date output is not rewritten"

    second = run_tokenize(clean, out, small_config(shard_tokens=1024))
    assert second["digest"] != first["digest"]
    assert {p.name for p in out.iterdir()} == {o["path"] for o in second["outputs"]} | {"manifest.json"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []

    (out / "val-00000.bin").write_bytes(b"damaged")
    third = run_tokenize(clean, out, small_config(shard_tokens=1024))
    assert third["digest"] == second["digest"] and TokenData.open(out)

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(StageError, match="not a tokenize output folder"):
        run_tokenize(clean, other, small_config())
    assert (other / "keep.txt").read_text() == "mine"


def test_encode_part_reuses_a_finished_part(tmp_path, shakespeare_path):
    clean = write_clean(tmp_path / "clean", [paragraphs(shakespeare_path, 100)])
    cfg = small_config()
    tok = train_tokenizer(clean, tmp_path, cfg)
    part, work = clean / "part-00000.parquet", tmp_path / "work"
    first = encode_part(part, tok["path"], work, cfg)
    stamps = {s: Path(i["path"]).stat().st_mtime_ns for s, i in first["splits"].items()}
    assert encode_part(part, tok["path"], work, cfg) == first
    assert {s: Path(i["path"]).stat().st_mtime_ns for s, i in first["splits"].items()} == stamps
    moved = encode_part(part, tok["path"], work, cfg.model_copy(update={"val_fraction": 0.5}))
    assert moved["splits"]["val"]["docs"] > first["splits"]["val"]["docs"]
    assert sum(i["bytes"] for i in moved["splits"].values()) == sum(
        i["bytes"] for i in first["splits"].values()
    )


# --------------------------------------------------------------------------- the loop closes


@pytest.mark.slow  # a real (tiny) training run: several seconds, most of it importing torch
def test_lm_trains_on_the_token_folder(tmp_path, shakespeare_path):
    from lm import apply_overrides, get_preset
    from lm.train import train

    text = shakespeare_path.read_text(encoding="utf-8")[:200_000]
    out = tmp_path / "tokens"
    run_tokenize(
        write_clean(tmp_path / "clean", [[("shakespeare-200k", text)]]), out, small_config(vocab_size=512)
    )
    preset = get_preset("tiny")
    model_cfg, train_cfg = apply_overrides(
        preset.model,
        preset.train,
        [
            "max_steps=3",
            "n_layer=1",
            "d_model=64",
            "n_head=2",
            "batch_size=4",
            "max_seq_len=64",
            "device=cpu",
        ],
    )
    result = train(model_cfg, train_cfg, out, tmp_path / "run")
    assert result.step == 3
    assert math.isfinite(result.metrics["loss"])
    assert math.isfinite(result.metrics["val_bpb"]) and result.metrics["val_bpb"] > 0


def test_one_tokenizer_for_a_mixture_samples_each_source_by_weight(token_dir, tmp_path):
    from tasks.tokenize import train_mixture_tokenizer

    clean = token_dir.parent / f"{token_dir.name}-stages" / "clean"  # the shared fixture's clean output
    cfg = TokenizeConfig(vocab_size=512, sample_bytes=40_000)
    record = train_mixture_tokenizer([("a", clean, 3.0), ("b", clean, 1.0)], tmp_path, cfg)
    got = record["sample_bytes_by_source"]
    # each source's share of the sample is its weight's (a hash-chosen share of its chunks, capped)
    assert got["a"] <= 30_000 + 4192 and got["b"] <= 10_000 + 4192
    assert got["a"] / got["b"] == pytest.approx(3.0, rel=0.2), got
    assert (tmp_path / "tokenizer.model").is_file() and record["vocab_size"] == 512
