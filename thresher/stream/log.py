"""The broadcast log: a bounded, sequenced log of chunk handles with one seeded schedule.

Chunks are numbered in append order. They are dealt into *superblocks* of
`S = mix_chunks * P` chunks (P = capacity // (2 * mix_chunks), so a superblock is at most half
the log and the pump can fill the next one while trainers read this one). Inside a superblock a
permutation drawn from (seed, superblock) deals the chunks into P *batch groups* of `mix_chunks`
chunks; a group's rows are concatenated in that order and permuted by a permutation drawn from
(seed, group). Everything is a function of the seed and the data, never of timing, which is why
every trainer, every executor and every replay sees identical batches.

Release. A trainer *commits* a cursor after it has checkpointed there. A group is passed by a
trainer once its committed cursor is in a later group; a chunk is released once every trainer
has passed its group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

Handle = TypeVar("Handle")


@dataclass(frozen=True, order=True)
class Cursor:
    """A position in the batch sequence: `offset` rows into batch group `group`."""

    group: int = 0
    offset: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"group": self.group, "offset": self.offset}


@dataclass(frozen=True)
class Group(Generic[Handle]):
    """One batch group: its chunks in mixing order, and the seed of its row permutation."""

    index: int
    handles: tuple[Handle, ...]
    rows: int
    perm_seed: tuple[int, int, int]

    def permutation(self) -> np.ndarray:
        return np.random.default_rng(list(self.perm_seed)).permutation(self.rows)


class LogFull(RuntimeError):
    pass


@dataclass
class _LogEntry(Generic[Handle]):
    """One appended chunk's place in the log: its handle (None once released) and rows."""
    handle: Handle | None
    rows: int


@dataclass
class LogCounters:
    appended: int = 0
    released: int = 0
    peak_held: int = 0


class BroadcastLog(Generic[Handle]):
    """A bounded log of chunk handles, read by every trainer through one seeded schedule."""

    def __init__(self, capacity_chunks: int, mix_chunks: int, seed: int,
                 trainer_ids: Sequence[str]) -> None:
        if capacity_chunks < 2 * mix_chunks:
            raise ValueError("capacity_chunks must be at least 2 x mix_chunks")
        self.capacity = capacity_chunks
        self.mix = mix_chunks
        self.seed = seed
        self.groups_per_superblock = max(1, capacity_chunks // (2 * mix_chunks))
        self.superblock = mix_chunks * self.groups_per_superblock
        self.committed: dict[str, Cursor] = {t: Cursor() for t in trainer_ids}
        self.finished = False
        self.counters = LogCounters()
        self._chunks: list[_LogEntry[Handle]] = []
        self._deal: dict[int, list[list[int]]] = {}  # superblock -> chunk seqs per group
        self._released_groups = 0  # groups below this index are released

    # -- pump side ---------------------------------------------------------------------------

    @property
    def held(self) -> int:
        return self.counters.appended - self.counters.released

    @property
    def full(self) -> bool:
        return self.held >= self.capacity

    def append(self, handle: Handle, rows: int) -> int:
        """Append a chunk; returns its sequence number. Raises LogFull when at capacity."""
        if self.finished:
            raise RuntimeError("append after finish")
        if self.full:
            raise LogFull(f"log holds {self.held} chunks, its capacity")
        self._chunks.append(_LogEntry(handle, rows))
        self.counters.appended += 1
        self.counters.peak_held = max(self.counters.peak_held, self.held)
        return len(self._chunks) - 1

    def finish(self) -> None:
        self.finished = True

    # -- schedule ----------------------------------------------------------------------------

    @property
    def n_groups(self) -> int | None:
        """Total number of groups, known once the stream is finished."""
        if not self.finished:
            return None
        n = len(self._chunks)
        full_sb, rest = divmod(n, self.superblock)
        return full_sb * self.groups_per_superblock + math.ceil(rest / self.mix)

    def _dealt(self, superblock: int) -> list[list[int]] | None:
        if superblock in self._deal:
            return self._deal[superblock]
        start = superblock * self.superblock
        end = start + self.superblock
        if len(self._chunks) < end and not self.finished:
            return None  # this superblock is not complete yet
        seqs = np.arange(start, min(end, len(self._chunks)))
        order = np.random.default_rng([self.seed, 1, superblock]).permutation(len(seqs))
        seqs = seqs[order]
        groups = [seqs[i:i + self.mix].tolist() for i in range(0, len(seqs), self.mix)]
        self._deal[superblock] = groups
        return groups

    def group(self, g: int) -> Group[Handle] | None:
        """Group g, or None if its chunks are not all appended yet.

        Raises IndexError past the end of a finished stream and ValueError if the group was
        already released (a trainer asking for it has lost more than its committed cursor).
        """
        n = self.n_groups
        if n is not None and g >= n:
            raise IndexError(f"group {g} is past the end of the stream ({n} groups)")
        if g < self._released_groups:
            raise ValueError(f"group {g} was released: every trainer had committed past it")
        dealt = self._dealt(g // self.groups_per_superblock)
        if dealt is None:
            return None
        seqs = dealt[g % self.groups_per_superblock]
        chunks = [self._chunks[s] for s in seqs]
        return Group(
            index=g,
            handles=tuple(c.handle for c in chunks),
            rows=sum(c.rows for c in chunks),
            perm_seed=(self.seed, 2, g),
        )

    def at_end(self, g: int) -> bool:
        n = self.n_groups
        return n is not None and g >= n

    # -- trainer side ------------------------------------------------------------------------

    def commit(self, trainer_id: str, cursor: Cursor) -> list[Handle]:
        """Record a trainer's checkpointed cursor; returns the handles this releases."""
        if trainer_id not in self.committed:
            raise KeyError(f"unknown trainer {trainer_id!r}; known: {sorted(self.committed)}")
        self.committed[trainer_id] = max(self.committed[trainer_id], cursor)
        return self.release()

    def release(self) -> list[Handle]:
        """Release the chunks of every group all trainers have passed; returns their handles.

        Called on commit, and by the pump after appending: chunks appended after every trainer
        has finished are released at once.
        """
        passed = min(c.group for c in self.committed.values())
        if self.n_groups is not None:
            passed = min(passed, self.n_groups)
        released: list[Handle] = []
        while self._released_groups < passed:
            g = self._released_groups
            dealt = self._dealt(g // self.groups_per_superblock)
            if dealt is None:  # its superblock is still filling; released on a later call
                break
            for seq in dealt[g % self.groups_per_superblock]:
                chunk = self._chunks[seq]
                if chunk.handle is not None:
                    released.append(chunk.handle)
                    chunk.handle = None
                    self.counters.released += 1
            self._released_groups += 1
        return released
