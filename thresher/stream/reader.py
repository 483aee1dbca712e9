"""BatchReader: one trainer's walk along the log's schedule, cutting identical batches.

A group's rows are gathered once, straight into their permuted order (`gather_group`, on the
trainer's threads, into an array leased from a `BufferPool`): one copy per row between the
harvested blocks and the trainer's batch. A batch views that array, so its holder releases it
when done, and the array is gathered into again only after the reader and every batch have
released it. With `prefetch`, the next group is fetched and gathered in a background thread
while the trainer steps on this one, so a trainer never waits for data that is already in the
log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic

import numpy as np

from thresher.stream.block import ActivationBlock
from thresher.stream.chunker import Chunk
from thresher.stream.log import BroadcastLog, Cursor, Group, Handle


class EndOfStream(Exception):
    pass


class NotReady(Exception):
    pass


# fetch(g): group g of the log (raises NotReady / EndOfStream); load(handles): their blocks;
# empty(shape, dtype): the array a group's activations are gathered into.
Fetch = Callable[[int], Group[Chunk[Handle]]]
Load = Callable[[Sequence[Handle]], Sequence[ActivationBlock]]
Empty = Callable[[tuple[int, ...], np.dtype], np.ndarray]


# Rows per scatter task of a gather: small enough to share a piece among threads, large enough
# that numpy's per-call cost is nothing beside the copy.
SCATTER_ROWS = 8192


def gather_group(group: Group[Chunk[Handle]], load: Load[Handle],
                 hook: str | None = None, empty: Empty = np.empty,
                 threads: Executor | None = None) -> ActivationBlock:
    """Group g's rows (its chunks in mixing order), permuted by the group's permutation, by
    scatters of slices of its pieces: row i of the result is row perm[i] of the concatenation.
    Its activations land in `empty`'s array (pinned memory for a CUDA trainer).

    With `threads`, the scatters (`SCATTER_ROWS` rows each) run on that pool: they write
    disjoint rows and numpy lets go of the GIL while it copies, so a gather runs on several
    cores (benchmarks/data_path.py on 2 cores: 2.4 GB/s on one thread, 4.0 on two)."""
    pieces = [p for chunk in group.handles for p in chunk.pieces]
    blocks = load([p.block for p in pieces])
    perm = group.permutation()
    where = np.empty_like(perm)
    where[perm] = np.arange(len(perm))  # where each concatenated row lands
    first = blocks[0]
    cols = _hook_columns(first, hook)
    width = cols.stop - cols.start
    acts = empty((len(perm), width), first.acts.dtype)
    example_id = np.empty(len(perm), dtype=np.int64)
    position = np.empty(len(perm), dtype=np.int32)
    labelled = all(b.label is not None for b in blocks)
    label = np.empty(len(perm), dtype=np.int64) if labelled else None

    def scatter(block: ActivationBlock, start: int, offset: int, rows: int) -> None:
        """Rows [start, start + rows) of `block`, which are rows [offset, offset + rows) of
        the group's concatenation, to their places."""
        dest = where[offset:offset + rows]
        source = slice(start, start + rows)
        acts[dest] = block.acts[source, cols]
        example_id[dest] = block.example_id[source]
        position[dest] = block.position[source]
        if label is not None:
            label[dest] = block.label[source]  # type: ignore[index]

    tasks, offset = [], 0
    for piece, block in zip(pieces, blocks, strict=True):
        for done in range(0, piece.rows, SCATTER_ROWS):
            tasks.append((block, piece.start + done, offset + done,
                          min(SCATTER_ROWS, piece.rows - done)))
        offset += piece.rows
    if threads is None:
        for task in tasks:
            scatter(*task)
    else:
        for future in [threads.submit(scatter, *task) for task in tasks]:
            future.result()
    layout = ((hook, width),) if hook and first.hook_layout else first.hook_layout
    return ActivationBlock(acts=acts, example_id=example_id, position=position, label=label,
                           bf16_bits=first.bf16_bits, hook_layout=layout)


def _hook_columns(block: ActivationBlock, hook: str | None) -> slice:
    if hook is None or not block.hook_layout or len(block.hook_layout) == 1:
        return slice(0, block.d)
    return slice(*block.hook_span(hook))


@dataclass(eq=False)
class _Lent:
    """An array of a pool out on lease, and how many leases on it are not yet released."""
    array: np.ndarray
    holders: int


class Lease:
    """One holder's claim on an array of a `BufferPool`.

    The array goes back to the pool, to be handed out again, once every lease on it is
    released. `share()` adds a holder (a batch that views the array). Releasing a lease twice
    is an error; a lease never released only keeps its array from being reused (the pool
    allocates a new one), so a forgotten release costs memory, never rows.
    """

    def __init__(self, pool: BufferPool, lent: _Lent) -> None:
        self._pool = pool
        self._lent = lent
        self._released = False

    @property
    def array(self) -> np.ndarray:
        return self._lent.array

    def share(self) -> Lease:
        """Another lease on the same array, released on its own."""
        with self._pool.lock:
            if self._released:
                raise RuntimeError("cannot share a lease that was already released")
            self._lent.holders += 1
            return Lease(self._pool, self._lent)

    def release(self) -> None:
        with self._pool.lock:
            if self._released:
                raise RuntimeError("this lease was already released")
            self._released = True
            self._lent.holders -= 1
            if self._lent.holders == 0:
                self._pool.put_back(self._lent.array)


class BufferPool:
    """Arrays for gathered groups, each handed out under a `Lease` and handed out again only
    after every lease on it was released.

    A group's activations are hundreds of MB, and memory fresh from the OS costs a page fault
    and the zeroing of each 4 KiB page on first touch; an array used before has paid that. The
    pool keeps at most `keep` free arrays; a leased array belongs to its holders alone.
    """

    def __init__(self, empty: Empty = np.empty, keep: int = 2) -> None:
        self.empty = empty
        self.keep = keep
        self.lock = threading.Lock()  # the prefetch thread leases, the trainer's thread releases
        self._free: list[np.ndarray] = []
        self.reused = 0  # leases on an array handed out before

    def lease(self, shape: tuple[int, ...], dtype: np.dtype) -> Lease:
        """A lease on a free array of that shape and dtype, or on a new one."""
        with self.lock:
            for i, array in enumerate(self._free):
                if array.shape == shape and array.dtype == dtype:
                    del self._free[i]
                    self.reused += 1
                    return Lease(self, _Lent(array, holders=1))
        return Lease(self, _Lent(self.empty(shape, dtype), holders=1))

    def put_back(self, array: np.ndarray) -> None:
        """Called, under the lock, as the last lease on `array` is released."""
        self._free = [*self._free, array][-self.keep:]


@dataclass(frozen=True)
class GatheredGroup:
    """A group's permuted rows and the lease on the array that holds their activations."""
    block: ActivationBlock
    lease: Lease


class Batch:
    """A batch and the leases on the group arrays it views: `release()` them once the batch is
    done with (its step taken), so a later gather may reuse the arrays. Used as a context
    manager, it releases on exit. A batch copied out of two groups holds no lease."""

    def __init__(self, block: ActivationBlock, leases: Sequence[Lease] = ()) -> None:
        self.block = block
        self._leases = tuple(leases)
        self._released = False

    def release(self) -> None:
        if self._released:
            raise RuntimeError("this batch was already released")
        self._released = True
        for lease in self._leases:
            lease.release()

    def __enter__(self) -> ActivationBlock:
        return self.block

    def __exit__(self, *exc: object) -> None:
        self.release()


class GroupGatherer(Generic[Handle]):
    """`gatherer(g)`: group g gathered into a leased array (raises NotReady / EndOfStream).

    With `prefetch`, asking for group g starts gathering g + 1 in a background thread; a
    prefetch that found g + 1 not ready yet is simply tried again when it is asked for.
    `threads` > 1 gathers with that many threads. The caller holds the group's lease and
    releases it when it moves past the group.
    """

    def __init__(self, fetch: Fetch[Handle], load: Load[Handle], hook: str | None = None,
                 prefetch: bool = False, empty: Empty = np.empty, threads: int = 1) -> None:
        self.fetch = fetch
        self.load = load
        self.hook = hook
        self.pool = BufferPool(empty)
        self._prefetcher = (ThreadPoolExecutor(1, thread_name_prefix="prefetch") if prefetch
                            else None)
        self._threads = (ThreadPoolExecutor(threads, thread_name_prefix="gather")
                         if threads > 1 else None)
        self._ahead: tuple[int, Future[GatheredGroup]] | None = None
        self.gather_seconds = 0.0  # spent fetching and gathering, in whichever thread
        self.gathered_rows = 0  # rows copied by gathers (one copy each)

    def _gather(self, g: int) -> GatheredGroup:
        start = time.perf_counter()
        leases: list[Lease] = []

        def leased_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
            leases.append(self.pool.lease(shape, dtype))
            return leases[-1].array

        try:
            block = gather_group(self.fetch(g), self.load, self.hook, leased_empty,
                                 self._threads)
        finally:
            self.gather_seconds += time.perf_counter() - start
        self.gathered_rows += len(block)
        return GatheredGroup(block, leases[0])

    def __call__(self, g: int) -> GatheredGroup:
        ahead, self._ahead = self._ahead, None
        group: GatheredGroup | None = None
        if ahead is not None and ahead[0] == g:
            try:
                group = ahead[1].result()
            except NotReady:
                group = None  # it was not in the log yet when prefetched: ask again below
        if group is None:
            group = self._gather(g)
        if self._prefetcher is not None:
            self._ahead = (g + 1, self._prefetcher.submit(self._gather, g + 1))
        return group

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=True, cancel_futures=True)
            self._ahead = None
        if self._threads is not None:
            self._threads.shutdown(wait=True)


class BatchReader(Generic[Handle]):
    """Cuts the batch sequence from a cursor.

    `fetch(g)` returns group g (or raises NotReady / EndOfStream); `load(handles)` returns the
    blocks of its chunks' pieces (`hook` picks one hook's columns of them; `empty` allocates
    the gathered group; `threads` gather it). Batches are rows
    [offset, offset + batch_size) of the endless concatenation of permuted groups, so they are
    the same for every reader with the same schedule. A batch views its group's array: its
    holder releases it when done (`Batch.release`), and only then may a later group be gathered
    into that array.
    """

    def __init__(self, fetch: Fetch[Handle], load: Load[Handle], batch_size: int,
                 cursor: Cursor | None = None, hook: str | None = None,
                 prefetch: bool = False, empty: Empty = np.empty, threads: int = 1) -> None:
        self.groups = GroupGatherer(fetch, load, hook, prefetch, empty, threads)
        self.batch_size = batch_size
        self.cursor = cursor or Cursor()
        self.rows_out = 0  # rows handed out in batches
        self.joined_rows = 0  # rows copied to join a batch that spans two groups
        self._group_index: int | None = None
        self._group: GatheredGroup | None = None  # its lease is the reader's until it moves on

    def _group_of(self, g: int) -> GatheredGroup:
        if self._group_index != g:
            done, self._group = self._group, self.groups(g)
            self._group_index = g
            if done is not None:
                done.lease.release()
        assert self._group is not None
        return self._group

    def next_batch(self) -> Batch:
        """The next batch; the last one of the stream may be shorter.

        Raises NotReady (the cursor is unchanged) or EndOfStream.
        """
        parts: list[ActivationBlock] = []
        leases: list[Lease] = []
        need = self.batch_size
        g, offset = self.cursor.group, self.cursor.offset
        try:
            while need:
                try:
                    group = self._group_of(g)
                except EndOfStream:
                    if parts:
                        break
                    raise
                part = group.block.take(slice(offset, offset + need))
                parts.append(part)
                leases.append(group.lease.share())
                need -= len(part)
                offset += len(part)
                if offset >= len(group.block):
                    g, offset = g + 1, 0
        except BaseException:
            for lease in leases:
                lease.release()
            raise
        self.cursor = Cursor(g, offset)
        self.rows_out += sum(len(part) for part in parts)
        if len(parts) == 1:
            return Batch(parts[0], leases)
        self.joined_rows += sum(len(part) for part in parts)
        batch = Batch(ActivationBlock.concat(parts))  # a copy: the groups' arrays are free
        for lease in leases:
            lease.release()
        return batch

    def close(self) -> None:
        self.groups.close()


def example_id_entropy_bits(example_id: np.ndarray) -> float:
    """Shuffle quality of a batch: entropy of its example ids, in bits.

    A perfectly mixed batch of B rows from B different examples reaches log2(B); a batch cut
    from one long example scores 0.
    """
    _, counts = np.unique(example_id, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def fetch_group(log: BroadcastLog[Handle], g: int) -> Group[Handle]:
    """Group g of the log for a reader: raises EndOfStream past the end of a finished stream
    and NotReady while its chunks are not all in."""
    if log.at_end(g):
        raise EndOfStream
    group = log.group(g)
    if group is None:
        raise NotReady
    return group
