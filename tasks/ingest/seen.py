"""The texts a shard has already read: a fixed-size hash table of digests, checked in batches.

A shard drops a repeat of a text it has read before it stages it, which costs far less than the
commit's rewrite of a part that lost rows (tasks/ingest/commit.py). The table holds the first 16
bytes of each text's sha256 (two uint64 per slot; open addressing, linear probing), is allocated
once at a size the stage's memory_limit sets, and is filled to at most MAX_LOAD of its slots: its
memory does not grow with the corpus. Past that load a new text is staged without being recorded,
and the commit drops its later repeats: the output is the same, only the commit has more to do.

A match of all 128 bits is taken as the same text (a false match needs about 2^64 texts); a miss
only leaves a repeat for the commit to find. Numpy checks a batch of digests at once, one probe
round at a time, so a document costs a fraction of a microsecond, not a Python loop.
"""

from __future__ import annotations

import numpy as np

MAX_LOAD = 0.6  # probes stay short (linear probing averages ~3.6 for a miss at 0.6)
MEMORY_SHARE = 1 / 3  # of memory_limit, for the table: the shards run before the commit's DuckDB
BYTES_PER_TEXT = 128  # sizing a small shard's table: shorter texts fill it sooner (the commit copes)
SLOT_BYTES = 16
MIN_SLOTS = 1 << 10


def table_slots(memory_limit: int, input_bytes: int) -> int:
    """Slots for one shard's table, a power of two: MEMORY_SHARE of memory_limit (rounded down),
    or fewer for a small shard (room for one text per BYTES_PER_TEXT of its input, rounded up).
    The same at any corpus size past that: memory set by the setting, not by the corpus. Shards
    read at once hold a table each: ingest_shard passes memory_limit divided by the processes
    the plan reads in (plan.reading_processes)."""
    budget = 1 << max(0, (int(memory_limit * MEMORY_SHARE) // SLOT_BYTES).bit_length() - 1)
    wanted = 1 << max(0, int(input_bytes / BYTES_PER_TEXT / MAX_LOAD)).bit_length()
    return max(MIN_SLOTS, min(budget, wanted))


class SeenTexts:
    """The texts a shard has read, by the first 16 bytes of their sha256."""

    def __init__(self, slots: int):
        if slots & (slots - 1):
            raise ValueError(f"SeenTexts needs a power of two of slots; got {slots}")
        # np.zeros maps zeroed pages lazily: a small corpus touches only a few of them.
        self.table = np.zeros((slots, 2), dtype=np.uint64)  # (hi, lo); lo == 0: an empty slot
        self.mask = np.uint64(slots - 1)
        self.capacity = int(slots * MAX_LOAD)
        self.size = 0

    @property
    def full(self) -> bool:
        return self.size >= self.capacity

    def first_seen(self, digests: list[bytes]) -> np.ndarray:
        """For each sha256 digest, in order: True where its text is new (first in the batch and
        not recorded before), False for a repeat. Records the new ones while there is room."""
        n = len(digests)
        fresh = np.zeros(n, dtype=bool)
        if not n:
            return fresh
        # Repeats inside the batch: only each text's first occurrence goes on (a dict built in C
        # from the end, so each digest keeps its smallest index).
        first = np.fromiter(
            dict(zip(reversed(digests), range(n - 1, -1, -1), strict=True)).values(), np.int64
        )
        first.sort()
        keys = np.frombuffer(b"".join([digests[i][:16] for i in first]), dtype="<u8").reshape(-1, 2).copy()
        keys[:, 1] |= np.uint64(1)  # never 0, the mark of an empty slot
        new = self._insert(keys)
        fresh[first[new]] = True
        return fresh

    def _insert(self, keys: np.ndarray) -> np.ndarray:
        """keys: distinct (hi, lo) rows. True where a key was not in the table (it is added while
        the table has room); False where it was."""
        new = np.zeros(len(keys), dtype=bool)
        slot = keys[:, 0] & self.mask
        todo = np.arange(len(keys))
        while todo.size:
            at = self.table[slot[todo]]
            same = (at[:, 0] == keys[todo, 0]) & (at[:, 1] == keys[todo, 1])
            empty = at[:, 1] == 0
            claims = todo[empty]
            done = same.copy()
            if claims.size:
                # Several keys may reach the same empty slot: the first of each takes it; the
                # others see it taken in the next round and move on.
                _, first = np.unique(slot[claims], return_index=True)
                winners = claims[first]
                new[winners] = True
                room = max(0, self.capacity - self.size)
                kept = winners[:room]  # past the load limit a new key is not recorded
                self.table[slot[kept]] = keys[kept]
                self.size += len(kept)
                done[np.flatnonzero(empty)[first]] = True  # the winners' places in `todo`
            moving = ~same & ~empty
            slot[todo[moving]] = (slot[todo[moving]] + np.uint64(1)) & self.mask
            todo = todo[~done]
        return new
