"""BatchReader: one trainer's walk along the log's schedule, cutting identical batches.

A group's rows are gathered once, straight into their permuted order (`gather_group`): one copy
per row between the harvested blocks and the trainer's batch. With `prefetch`, the next group
is fetched and gathered in a background thread while the trainer steps on this one, so a
trainer never waits for data that is already in the log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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


def gather_group(group: Group[Chunk[Handle]], load: Load[Handle],
                 hook: str | None = None, empty: Empty = np.empty) -> ActivationBlock:
    """Group g's rows (its chunks in mixing order), permuted by the group's permutation, in
    one scatter per piece: row i of the result is row perm[i] of the concatenation. Its
    activations land in `empty`'s array (pinned memory for a CUDA trainer)."""
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
    offset = 0
    for piece, block in zip(pieces, blocks, strict=True):
        dest = where[offset:offset + piece.rows]
        rows = slice(piece.start, piece.stop)
        acts[dest] = block.acts[rows, cols]
        example_id[dest] = block.example_id[rows]
        position[dest] = block.position[rows]
        if label is not None:
            label[dest] = block.label[rows]  # type: ignore[index]
        offset += piece.rows
    hooks = ((hook, width),) if hook and first.hooks else first.hooks
    return ActivationBlock(acts=acts, example_id=example_id, position=position, label=label,
                           bf16=first.bf16, hooks=hooks)


def _hook_columns(block: ActivationBlock, hook: str | None) -> slice:
    if hook is None or not block.hooks or len(block.hooks) == 1:
        return slice(0, block.d)
    return slice(*block.hook_span(hook))


class GroupRows(Generic[Handle]):
    """`rows(g)`: group g's permuted rows (raises NotReady / EndOfStream).

    With `prefetch`, asking for group g starts gathering g + 1 in a background thread; a
    prefetch that found g + 1 not ready yet is simply tried again when it is asked for.
    """

    def __init__(self, fetch: Fetch[Handle], load: Load[Handle], hook: str | None = None,
                 prefetch: bool = False, empty: Empty = np.empty) -> None:
        self.fetch = fetch
        self.load = load
        self.hook = hook
        self.empty = empty
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch") if prefetch else None
        self._ahead: tuple[int, Future[ActivationBlock]] | None = None
        self.gather_seconds = 0.0  # spent fetching and gathering, in whichever thread
        self.gathered_rows = 0  # rows copied by gathers (one copy each)

    def _gather(self, g: int) -> ActivationBlock:
        start = time.perf_counter()
        try:
            rows = gather_group(self.fetch(g), self.load, self.hook, self.empty)
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

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._ahead = None


class BatchReader(Generic[Handle]):
    """Cuts the batch sequence from a cursor.

    `fetch(g)` returns group g (or raises NotReady / EndOfStream); `load(handles)` returns the
    blocks of its chunks' pieces (`hook` picks one hook's columns of them; `empty` allocates
    the gathered group). Batches are rows
    [offset, offset + batch_size) of the endless concatenation of permuted groups, so they are
    the same for every reader with the same schedule.
    """

    def __init__(self, fetch: Fetch[Handle], load: Load[Handle], batch_size: int,
                 cursor: Cursor | None = None, hook: str | None = None,
                 prefetch: bool = False, empty: Empty = np.empty) -> None:
        self.groups = GroupRows(fetch, load, hook, prefetch, empty)
        self.batch_size = batch_size
        self.cursor = cursor or Cursor()
        self.rows_out = 0  # rows handed out in batches
        self.joined_rows = 0  # rows copied to join a batch that spans two groups
        self._group_index: int | None = None
        self._group_rows: ActivationBlock | None = None

    def _rows_of(self, g: int) -> ActivationBlock:
        if self._group_index != g:
            self._group_rows = self.groups(g)
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
