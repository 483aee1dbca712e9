"""The stream's plain classes set up for tests: a log of given chunks, a reader of it."""

from __future__ import annotations

import numpy as np

from thresher.stream.block import ActivationBlock
from thresher.stream.chunker import Chunk, Piece
from thresher.stream.log import BroadcastLog, Cursor
from thresher.stream.reader import BatchReader, fetch_group


def whole(block: ActivationBlock) -> Chunk[ActivationBlock]:
    """A chunk of one whole block (the log's handles are chunks)."""
    return Chunk((Piece(block, 0, len(block)),))


def reader_for(log: BroadcastLog, batch_size: int, cursor: Cursor | None = None,
               prefetch: bool = False) -> BatchReader:
    """A reader of `log` in this process (a group's handles are the blocks themselves)."""
    return BatchReader(lambda g: fetch_group(log, g), list, batch_size, cursor or Cursor(),
                       prefetch=prefetch)


def make_log(chunks: list[np.ndarray]) -> BroadcastLog:
    """A finished log for one trainer (t0) of one chunk per array, example ids counting up."""
    log = BroadcastLog(capacity_chunks=8, mix_chunks=2, seed=0, trainer_ids=["t0"])
    start = 0
    for acts in chunks:
        n = len(acts)
        log.append(whole(ActivationBlock(acts.astype(np.float32), np.arange(start, start + n),
                                         np.zeros(n, dtype=np.int32))), n)
        start += n
    log.finish()
    return log
