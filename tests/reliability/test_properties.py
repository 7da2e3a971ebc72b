"""Property-based tests (hypothesis) of the reliability suite."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lm.data import HEADER_SIZE, dtype_for_vocab, read_header, read_shard, write_shard
from lm.errors import DataError

# ------------------------------------------------------------------ token shards (lm/data.py)

U16 = 2**16
U32 = 2**32
SHARD_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# vocabulary sizes: small, around the uint16/uint32 boundary, up to the largest uint32 can index
vocab_sizes = st.one_of(
    st.integers(1, 600),
    st.integers(U16 - 3, U16 + 3),
    st.integers(U16 + 4, U32),
    st.sampled_from([U32 - 1, U32]),
)


@st.composite
def shards(draw, max_len: int = 300):
    """(tokens, n_docs, vocab_size): any ids in [0, vocab), in any integer dtype that holds them,
    the empty array included, and often the boundary ids 0 and vocab - 1."""
    vocab = draw(vocab_sizes)
    ids = st.one_of(st.integers(0, vocab - 1), st.sampled_from([0, vocab - 1]))
    values = draw(st.lists(ids, max_size=max_len))
    dtypes = [
        d for d in (np.uint16, np.int32, np.uint32, np.int64, np.uint64) if np.iinfo(d).max >= vocab - 1
    ]
    tokens = np.array(values, dtype=draw(st.sampled_from(dtypes)))
    return tokens, draw(st.integers(0, 2**40)), vocab


def shard_path(folder: str) -> Path:
    return Path(folder) / "train-00000.bin"


@SHARD_SETTINGS
@given(shards())
def test_shard_round_trip_any_tokens_any_vocab(shard):
    tokens, n_docs, vocab = shard
    with tempfile.TemporaryDirectory() as d:
        path = shard_path(d)
        write_shard(path, tokens, n_docs, vocab)
        header = read_header(path)
        assert header.itemsize == (2 if vocab <= U16 else 4)  # uint16 whenever the vocabulary fits
        assert (header.n_tokens, header.n_docs) == (len(tokens), n_docs)
        assert path.stat().st_size == HEADER_SIZE + len(tokens) * header.itemsize
        back = read_shard(path)
        assert back.dtype == dtype_for_vocab(vocab) and back.shape == (len(tokens),)
        assert np.array_equal(back.astype(np.int64), tokens.astype(np.int64))
        del back  # the memory map holds the file open


@SHARD_SETTINGS
@given(shards(), st.data())
def test_out_of_range_ids_are_refused_and_nothing_is_written(shard, data):
    tokens, n_docs, vocab = shard
    bad = data.draw(st.one_of(st.integers(vocab, vocab + U32), st.integers(-(2**40), -1)))
    tokens = np.insert(tokens.astype(np.int64), data.draw(st.integers(0, len(tokens))), bad)
    with tempfile.TemporaryDirectory() as d:
        path = shard_path(d)
        with pytest.raises(DataError, match=path.name):
            write_shard(path, tokens, n_docs, vocab)
        assert list(Path(d).iterdir()) == []


@SHARD_SETTINGS
@given(st.integers(U32 + 1, 2**62))
def test_vocabularies_beyond_uint32_are_refused(vocab):
    """uint32 cannot hold their ids: writing would wrap them silently."""
    with tempfile.TemporaryDirectory() as d, pytest.raises(DataError, match="vocab"):
        write_shard(shard_path(d), np.array([vocab - 1], dtype=np.int64), 1, vocab)


@SHARD_SETTINGS
@given(shards(), st.sampled_from([np.float32, np.float64, np.bool_, np.complex64]))
def test_non_integer_arrays_are_refused(shard, kind):
    """Floats would be truncated, booleans read as 0/1: only integer ids are written."""
    tokens, n_docs, vocab = shard
    assume(len(tokens) > 0)
    with tempfile.TemporaryDirectory() as d:
        with pytest.raises(DataError, match="integer"):
            write_shard(shard_path(d), tokens.astype(kind), n_docs, vocab)
        assert list(Path(d).iterdir()) == []


@SHARD_SETTINGS
@given(shards(max_len=100), st.data())
def test_truncated_or_extended_shards_are_refused_by_name(shard, data):
    tokens, n_docs, vocab = shard
    with tempfile.TemporaryDirectory() as d:
        path = shard_path(d)
        write_shard(path, tokens, n_docs, vocab)
        raw = path.read_bytes()
        cut = data.draw(st.integers(0, len(raw) + 16))
        assume(cut != len(raw))
        path.write_bytes(raw[:cut] if cut < len(raw) else raw + b"\0" * (cut - len(raw)))
        with pytest.raises(DataError, match=path.name):
            read_shard(path)


@SHARD_SETTINGS
@given(shards(max_len=50), st.integers(0, 23), st.integers(1, 255))
def test_damaged_header_fields_are_refused_by_name(shard, offset, xor):
    """Any change to magic, version, bytes per token or token count (the first 24 bytes) is refused."""
    tokens, n_docs, vocab = shard
    # an empty shard reads the same whatever its bytes per token: 2 <-> 4 changes nothing there
    assume(len(tokens) > 0 or not (12 <= offset < 16 and (2 ^ xor if offset == 12 else 2) in (2, 4)))
    with tempfile.TemporaryDirectory() as d:
        path = shard_path(d)
        write_shard(path, tokens, n_docs, vocab)
        raw = bytearray(path.read_bytes())
        raw[offset] ^= xor
        path.write_bytes(bytes(raw))
        with pytest.raises(DataError, match=path.name):
            read_shard(path)
