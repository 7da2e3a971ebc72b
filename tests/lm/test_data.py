import struct

import numpy as np
import pytest

from lm.data import HEADER_SIZE, TokenData, WindowSampler, read_header, read_shard, write_shard
from lm.errors import DataError


@pytest.mark.parametrize(("vocab", "itemsize"), [(50_000, 2), (65_536, 2), (100_000, 4)])
def test_shard_round_trip_and_dtype(tmp_path, vocab, itemsize):
    tokens = np.random.default_rng(0).integers(0, vocab, 1000)
    write_shard(tmp_path / "s.bin", tokens, n_docs=7, vocab_size=vocab)
    h = read_header(tmp_path / "s.bin")
    assert (h.itemsize, h.n_tokens, h.n_docs) == (itemsize, 1000, 7)
    assert np.array_equal(read_shard(tmp_path / "s.bin"), tokens)
    assert (tmp_path / "s.bin").stat().st_size == HEADER_SIZE + 1000 * itemsize


def test_out_of_range_tokens_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"\[0, 10\)"):
        write_shard(tmp_path / "s.bin", np.array([1, 2, 10]), 1, vocab_size=10)
    assert not (tmp_path / "s.bin").exists()


def test_bad_shards_fail_naming_the_file(tmp_path):
    good = tmp_path / "good.bin"
    write_shard(good, np.arange(100), 1, vocab_size=1000)
    data = good.read_bytes()
    cases = {
        "magic.bin": (b"NOTATOK!" + data[8:], "not a Forja token shard"),
        "truncated.bin": (data[:-10], "truncated or corrupted"),
        "version.bin": (data[:8] + struct.pack("<I", 9) + data[12:], "format version 9"),
        "short.bin": (data[:20], "too short"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=message) as e:
            read_shard(tmp_path / name)
        assert name in str(e.value)


def shards():
    return [np.arange(1000) % 251, (np.arange(777) * 7) % 251]


def test_sampler_windows_are_shifted_pairs_from_the_shards():
    s = WindowSampler(shards(), seq_len=16, seed=0)
    batch = s.next_batch(8)
    assert batch.shape == (8, 17)
    for w in batch:  # every window is a contiguous slice of one shard
        assert any(
            np.array_equal(w, sh[i : i + 17]) for sh in shards() for i in range(len(sh) - 16) if sh[i] == w[0]
        )


def test_sampler_is_deterministic_and_resumes_exactly():
    a = WindowSampler(shards(), 16, seed=3)
    straight = [a.next_batch(8) for _ in range(30)]  # crosses several epochs
    b = WindowSampler(shards(), 16, seed=3)
    first = [b.next_batch(8) for _ in range(11)]
    state = b.state_dict()
    c = WindowSampler(shards(), 16, seed=3)
    c.load_state_dict(state)
    rest = [c.next_batch(8) for _ in range(19)]
    assert all(np.array_equal(x, y) for x, y in zip(straight, first + rest, strict=True))
    other = WindowSampler(shards(), 16, seed=4)
    assert not np.array_equal(other.next_batch(8), straight[0])


def test_an_epoch_visits_every_window_once():
    s = WindowSampler(shards(), 16, seed=1)
    n = len(s._starts)
    seen = {(*w[:3].tolist(), len(w)) for w in s.next_batch(n)}
    assert len(seen) == n and s.epoch == 0
    s.next_batch(1)
    assert s.epoch == 1


def test_data_parallel_ranks_read_disjoint_slices_of_the_global_batch():
    single = WindowSampler(shards(), 16, seed=5).next_batch(8)
    ranks = [WindowSampler(shards(), 16, seed=5, rank=r, world_size=2).next_batch(4) for r in range(2)]
    assert np.array_equal(np.concatenate(ranks), single)
    assert not any(np.array_equal(x, y) for x in ranks[0] for y in ranks[1])


def test_sampler_state_from_another_config_is_refused():
    s = WindowSampler(shards(), 16, seed=1)
    with pytest.raises(DataError, match="seed=1 seq_len=16"):
        WindowSampler(shards(), 32, seed=1).load_state_dict(s.state_dict())


def test_token_folder_needs_a_manifest(tmp_path):
    with pytest.raises(DataError, match="forja tokenize"):
        TokenData.open(tmp_path)


def test_token_folder_opens(token_dir):
    data = TokenData.open(token_dir)
    assert data.splits["train"].n_tokens > 10 * data.splits["val"].n_tokens / 2
    assert data.vocab_size == 512 and data.tokenizer_path.is_file()
