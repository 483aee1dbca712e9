"""The stream between harvest and training: chunking, the broadcast log, and batch reading.

Plain classes, no Ray. The Ray pump actor (``pump.py``) and the inline executor drive the same
objects; only what a "chunk handle" is differs (an ObjectRef there, the block itself inline).

Flow:
  harvested blocks ─► Chunker ─► holdout rows (kept for evaluation)
                               ─► StreamStats per hook (input scale + decoder-bias estimate)
                               ─► training chunks of exactly `chunk_rows` rows ─► BroadcastLog
  BroadcastLog: a bounded, sequenced log of chunk handles with one seeded mixing schedule.
  BatchReader (one per trainer): walks the schedule from a Cursor and cuts identical batches.

The schedule. Chunks are numbered in append order. They are dealt into *superblocks* of
`S = mix_chunks * P` chunks (P = capacity // (2 * mix_chunks), so a superblock is at most half
the log and the pump can fill the next one while trainers read this one). Inside a superblock a
permutation drawn from (seed, superblock) deals the chunks into P *batch groups* of `mix_chunks`
chunks; a group's rows are concatenated in that order and permuted by a permutation drawn from
(seed, group). Batches are consecutive `batch_size` slices of the endless sequence of permuted
groups, so a batch may span two groups. Everything is a function of the seed and the data, never
of timing, which is why every trainer, every executor and every replay sees identical batches.

Release. A trainer *commits* a cursor after it has checkpointed there. A group is passed by a
trainer once its committed cursor is in a later group; a chunk is released once every trainer
has passed its group.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from thresher.block import ActivationBlock

Handle = TypeVar("Handle")


# --------------------------------------------------------------------------------------------
# Stream statistics shared by every SAE of the stream
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamStats:
    """One input scale and one decoder-bias estimate per stream (a fair comparison of SAEs).

    SAEs train on `x * scale`, chosen so that E||x * scale|| = sqrt(d_in) (Anthropic, April
    2024); `center` is the geometric median of the first rows, in raw units, used to initialise
    every SAE's decoder bias.
    """

    d_in: int
    scale: float
    center: np.ndarray
    rows: int  # rows the estimate used

    def to_dict(self) -> dict[str, Any]:
        return {"d_in": self.d_in, "scale": self.scale, "center": self.center.tolist(),
                "rows": self.rows}


def geometric_median(x: np.ndarray, iters: int = 50, tol: float = 1e-6) -> np.ndarray:
    """Weiszfeld's algorithm in float64; starts at the mean."""
    x = np.asarray(x, dtype=np.float64)
    median = x.mean(axis=0)
    for _ in range(iters):
        dist = np.linalg.norm(x - median, axis=1)
        weights = 1.0 / np.maximum(dist, 1e-12)
        new = (weights[:, None] * x).sum(axis=0) / weights.sum()
        if np.linalg.norm(new - median) <= tol * max(1.0, np.linalg.norm(median)):
            return new
        median = new
    return median


def estimate_hook_stats(block: ActivationBlock) -> dict[str, StreamStats]:
    """One StreamStats per hook of the block ("" for a block of one unnamed hook)."""
    if not block.hooks:
        return {"": estimate_stream_stats(block.float32())}
    return {hook: estimate_stream_stats(block.select(hook).float32()) for hook, _ in block.hooks}


def estimate_stream_stats(acts: np.ndarray) -> StreamStats:
    """The input scale (E||x|| = sqrt(d_in) after scaling) and decoder-bias estimate (geometric
    median) from a stream's first rows. Rows with NaN or Inf are left out, as training skips
    them: one would make both estimates, and every weight with them, NaN."""
    acts = np.asarray(acts, dtype=np.float64)
    if len(acts) == 0:
        raise ValueError("the stream produced no rows: check the inputs and the hook")
    acts = acts[np.isfinite(acts).all(axis=1)]
    if len(acts) == 0:
        raise ValueError("every row of the stream's normalisation rows holds NaN or Inf: check "
                         "the backbone's dtype (bf16 overflows) and the inputs")
    mean_norm = float(np.linalg.norm(acts, axis=1).mean())
    scale = math.sqrt(acts.shape[1]) / mean_norm if mean_norm > 0 else 1.0
    center = geometric_median(acts).astype(np.float32)
    return StreamStats(d_in=int(acts.shape[1]), scale=scale, center=center, rows=len(acts))


# --------------------------------------------------------------------------------------------
# Chunker: harvested blocks -> holdout, stream stats, fixed-size training chunks
# --------------------------------------------------------------------------------------------


class Chunker:
    """Cuts the harvested blocks, in order, into the holdout and fixed-size training chunks.

    The holdout is the first whole blocks reaching `holdout_rows` (whole input batches, so no
    example is split between holdout and training). Training rows are cut into chunks of exactly
    `chunk_rows`; `finish()` flushes the last, shorter one. `wanted_rows` (training rows the
    trainers will consume) lets the pump stop harvesting early.
    """

    def __init__(self, chunk_rows: int, holdout_rows: int, norm_rows: int,
                 wanted_rows: int | None = None) -> None:
        self.chunk_rows = chunk_rows
        self.holdout_rows = holdout_rows
        self.norm_rows = norm_rows
        self.wanted_rows = wanted_rows
        self.holdout: list[ActivationBlock] = []
        self.holdout_count = 0
        self.stats: dict[str, StreamStats] | None = None  # per hook, once norm_rows are in
        self.train_rows = 0  # training rows emitted in chunks
        self.blocks_seen = 0
        self._pending: list[ActivationBlock] = []
        self._pending_rows = 0
        self._norm: list[np.ndarray] = []
        self._norm_rows = 0

    @property
    def done(self) -> bool:
        """True once the chunks emitted cover every training row wanted."""
        return self.wanted_rows is not None and self.train_rows >= self.wanted_rows

    def add(self, block: ActivationBlock) -> list[ActivationBlock]:
        """Take one harvested block; return the training chunks it completes."""
        self.blocks_seen += 1
        if len(block) == 0:
            return []
        if self.holdout_count < self.holdout_rows:
            self.holdout.append(block)
            self.holdout_count += len(block)
            return []
        if self.stats is None:
            self._norm.append(block)
            self._norm_rows += len(block)
            if self._norm_rows >= self.norm_rows:
                self._make_stats()
        self._pending.append(block)
        self._pending_rows += len(block)
        chunks = []
        while self._pending_rows >= self.chunk_rows and not self.done:
            chunks.append(self._cut(self.chunk_rows))
        return chunks

    def finish(self) -> list[ActivationBlock]:
        """End of the harvest: flush the last partial chunk and settle the stream stats."""
        chunks = []
        if self._pending_rows and not self.done:
            chunks.append(self._cut(self._pending_rows))
        if self.stats is None and self._norm:
            self._make_stats()
        if self.stats is None and self.holdout:
            # Everything went to the holdout: estimate from it rather than fail later.
            held = self.holdout_block()
            self.stats = estimate_hook_stats(held.take(slice(0, self.norm_rows)))
        self._pending, self._pending_rows = [], 0
        return chunks

    def holdout_block(self) -> ActivationBlock:
        if not self.holdout:
            raise ValueError("the stream has no held-out rows (stream.holdout_rows is 0)")
        return ActivationBlock.concat(self.holdout)

    def _make_stats(self) -> None:
        rows = ActivationBlock.concat(self._norm).take(slice(0, self.norm_rows))
        self.stats = estimate_hook_stats(rows)
        self._norm = []

    def _cut(self, rows: int) -> ActivationBlock:
        merged = ActivationBlock.concat(self._pending)
        chunk, rest = merged.take(slice(0, rows)), merged.take(slice(rows, None))
        self._pending = [rest] if len(rest) else []
        self._pending_rows = len(rest)
        self.train_rows += len(chunk)
        return chunk


# --------------------------------------------------------------------------------------------
# BroadcastLog
# --------------------------------------------------------------------------------------------


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
class _Chunk(Generic[Handle]):
    handle: Handle | None
    rows: int


@dataclass
class LogCounters:
    appended: int = 0
    released: int = 0
    peak_held: int = 0
    held_history: list[int] = field(default_factory=list)


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
        self._chunks: list[_Chunk[Handle]] = []
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
        self._chunks.append(_Chunk(handle, rows))
        self.counters.appended += 1
        self.counters.peak_held = max(self.counters.peak_held, self.held)
        self.counters.held_history.append(self.held)
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


# --------------------------------------------------------------------------------------------
# BatchReader: one trainer's walk along the schedule
# --------------------------------------------------------------------------------------------


class EndOfStream(Exception):
    pass


class NotReady(Exception):
    pass


class BatchReader(Generic[Handle]):
    """Cuts the batch sequence from a cursor.

    `fetch(g)` returns group g (or raises NotReady / EndOfStream); `load(handles)` returns the
    chunks' blocks. Batches are rows [offset, offset + batch_size) of the endless concatenation
    of permuted groups, so they are the same for every reader with the same schedule.
    """

    def __init__(self, fetch: Callable[[int], Group[Handle]],
                 load: Callable[[Sequence[Handle]], list[ActivationBlock]],
                 batch_size: int, cursor: Cursor | None = None) -> None:
        self.fetch = fetch
        self.load = load
        self.batch_size = batch_size
        self.cursor = cursor or Cursor()
        self._group_index: int | None = None
        self._group_rows: ActivationBlock | None = None

    def _rows_of(self, g: int) -> ActivationBlock:
        if self._group_index != g:
            group = self.fetch(g)
            merged = ActivationBlock.concat(self.load(group.handles))
            self._group_rows = merged.take(group.permutation())
            self._group_index = g
        assert self._group_rows is not None
        return self._group_rows

    def next_batch(self) -> ActivationBlock:
        """The next batch; the last one of the stream may be shorter.

        Raises NotReady (the cursor is unchanged) or EndOfStream.
        """
        parts: list[ActivationBlock] = []
        need = self.batch_size
        g, offset = self.cursor.group, self.cursor.offset
        while need:
            try:
                rows = self._rows_of(g)
            except EndOfStream:
                if parts:
                    break
                raise
            take = rows.take(slice(offset, offset + need))
            parts.append(take)
            need -= len(take)
            offset += len(take)
            if offset >= len(rows):
                g, offset = g + 1, 0
        self.cursor = Cursor(g, offset)
        return ActivationBlock.concat(parts)


def example_id_entropy_bits(example_id: np.ndarray) -> float:
    """Shuffle quality of a batch: entropy of its example ids, in bits.

    A perfectly mixed batch of B rows from B different examples reaches log2(B); a batch cut
    from one long example scores 0.
    """
    _, counts = np.unique(example_id, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())
