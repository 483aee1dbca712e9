"""BatchReader: one trainer's walk along the log's schedule, cutting identical batches.

A group's rows are gathered once, straight into their permuted order (`gather_group`, on the
trainer's threads, into a recycled array): one copy per row between the harvested blocks and
the trainer's batch. With `prefetch`, the next group is fetched and gathered in a background
thread while the trainer steps on this one, so a trainer never waits for data that is already
in the log.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
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
    hooks = ((hook, width),) if hook and first.hooks else first.hooks
    return ActivationBlock(acts=acts, example_id=example_id, position=position, label=label,
                           bf16=first.bf16, hooks=hooks)


def _hook_columns(block: ActivationBlock, hook: str | None) -> slice:
    if hook is None or not block.hooks or len(block.hooks) == 1:
        return slice(0, block.d)
    return slice(*block.hook_span(hook))


class RecycledArrays:
    """An `Empty` that hands out again the arrays given back to it, once nothing else uses them.

    A group's activations are hundreds of MB, and memory fresh from the OS costs a page fault
    and the zeroing of each 4 KiB page: a gather into a new array ran at 1.9 GB/s, into a used
    one at 2.5 (256 MiB groups, this project's 2-core machine). The reader gives a group's array
    back when it moves past the group; it is handed out again only when its reference count
    shows that no batch, view or tensor still refers to it, so a caller that keeps a batch
    keeps its rows.
    """

    def __init__(self, empty: Empty = np.empty, keep: int = 2) -> None:
        self.empty = empty
        self.keep = keep
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()  # the prefetch thread takes, the reader gives back
        self.reused = 0

    def __call__(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        with self._lock:
            for i in range(len(self._free)):
                array = self._free[i]
                # Referred to by the list, `array` and getrefcount's argument only: unused.
                if (array.shape == shape and array.dtype == dtype
                        and sys.getrefcount(array) == 3):
                    del self._free[i]
                    self.reused += 1
                    return array
        return self.empty(shape, dtype)

    def give_back(self, array: np.ndarray) -> None:
        with self._lock:
            self._free = [*self._free, array][-self.keep:]


class GroupRows(Generic[Handle]):
    """`rows(g)`: group g's permuted rows (raises NotReady / EndOfStream).

    With `prefetch`, asking for group g starts gathering g + 1 in a background thread; a
    prefetch that found g + 1 not ready yet is simply tried again when it is asked for.
    `threads` > 1 gathers with that many threads. `release(rows)` hands a group's array back
    for a later gather (`RecycledArrays`).
    """

    def __init__(self, fetch: Fetch[Handle], load: Load[Handle], hook: str | None = None,
                 prefetch: bool = False, empty: Empty = np.empty, threads: int = 1) -> None:
        self.fetch = fetch
        self.load = load
        self.hook = hook
        self.empty = RecycledArrays(empty)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch") if prefetch else None
        self._threads = (ThreadPoolExecutor(threads, thread_name_prefix="gather")
                         if threads > 1 else None)
        self._ahead: tuple[int, Future[ActivationBlock]] | None = None
        self.gather_seconds = 0.0  # spent fetching and gathering, in whichever thread
        self.gathered_rows = 0  # rows copied by gathers (one copy each)

    def _gather(self, g: int) -> ActivationBlock:
        start = time.perf_counter()
        try:
            rows = gather_group(self.fetch(g), self.load, self.hook, self.empty, self._threads)
        finally:
            self.gather_seconds += time.perf_counter() - start
        self.gathered_rows += len(rows)
        return rows

    def __call__(self, g: int) -> ActivationBlock:
        ahead, self._ahead = self._ahead, None
        rows: ActivationBlock | None = None
        if ahead is not None and ahead[0] == g:
            try:
                rows = ahead[1].result()
            except NotReady:
                rows = None  # it was not in the log yet when prefetched: ask again below
        if rows is None:
            rows = self._gather(g)
        if self._pool is not None:
            self._ahead = (g + 1, self._pool.submit(self._gather, g + 1))
        return rows

    def release(self, rows: ActivationBlock) -> None:
        self.empty.give_back(rows.acts)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._ahead = None
        if self._threads is not None:
            self._threads.shutdown(wait=True)


class BatchReader(Generic[Handle]):
    """Cuts the batch sequence from a cursor.

    `fetch(g)` returns group g (or raises NotReady / EndOfStream); `load(handles)` returns the
    blocks of its chunks' pieces (`hook` picks one hook's columns of them; `empty` allocates
    the gathered group; `threads` gather it). Batches are rows
    [offset, offset + batch_size) of the endless concatenation of permuted groups, so they are
    the same for every reader with the same schedule.
    """

    def __init__(self, fetch: Fetch[Handle], load: Load[Handle], batch_size: int,
                 cursor: Cursor | None = None, hook: str | None = None,
                 prefetch: bool = False, empty: Empty = np.empty, threads: int = 1) -> None:
        self.groups = GroupRows(fetch, load, hook, prefetch, empty, threads)
        self.batch_size = batch_size
        self.cursor = cursor or Cursor()
        self.rows_out = 0  # rows handed out in batches
        self.joined_rows = 0  # rows copied to join a batch that spans two groups
        self._group_index: int | None = None
        self._group_rows: ActivationBlock | None = None

    def _rows_of(self, g: int) -> ActivationBlock:
        if self._group_index != g:
            done, self._group_rows = self._group_rows, self.groups(g)
            self._group_index = g
            if done is not None:
                self.groups.release(done)
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
        batch = ActivationBlock.concat(parts)
        self.rows_out += len(batch)
        if len(parts) > 1:
            self.joined_rows += len(batch)
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
