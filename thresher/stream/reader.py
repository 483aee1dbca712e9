"""BatchReader: one trainer's walk along the log's schedule, cutting identical batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic

import numpy as np

from thresher.stream.block import ActivationBlock
from thresher.stream.log import Cursor, Group, Handle


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
