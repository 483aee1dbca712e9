"""The pump: harvested blocks in, chunk handles into the broadcast log, as room frees up.

Plain logic (Chunker + BroadcastLog) that never reads an activation: it sees each harvested
block as a handle and its row count. The stream's service (thresher/harvest/service.py) drives
it in both executors, with the blocks themselves as handles inline and object refs it never
fetches on Ray.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from thresher.config import Config, StreamPlan, train_steps
from thresher.stream.chunker import Chunk, Chunker, Piece
from thresher.stream.log import BroadcastLog, Cursor, Handle

Stats = TypeVar("Stats")


def stream_chunker(cfg: Config) -> Chunker[Handle]:
    """The chunker of a stream: held-out rows first, then the normalisation rows, then the
    training rows a run wants (whole batches), cut into chunks."""
    s = cfg.stream
    return Chunker(s.chunk_rows, s.holdout_rows, s.norm_rows,
                   wanted_rows=train_steps(cfg.train) * cfg.train.batch_size)


class Pump(Generic[Handle, Stats]):
    """Chunks harvested blocks and appends the chunks to the log as room frees up.

    `estimate(pieces)` turns the normalisation rows into the stream statistics (computed on the
    spot inline, a remote task on Ray); it is called once, when those rows are in.
    """

    def __init__(self, cfg: Config, stream: StreamPlan,
                 estimate: Callable[[list[Piece[Handle]]], Stats]) -> None:
        s = cfg.stream
        self.chunker: Chunker[Handle] = stream_chunker(cfg)
        self.log: BroadcastLog[Chunk[Handle]] = BroadcastLog(
            s.capacity_chunks, s.mix_chunks, cfg.run.seed,
            [t.trainer_id for t in stream.trainers])
        self.estimate = estimate
        self.stats: Stats | None = None  # once the normalisation rows are in
        self.pending: deque[Chunk[Handle]] = deque()
        self.rows = 0  # rows taken in
        self.harvest_done = False

    def add(self, block: Handle, rows: int) -> None:
        self.rows += rows
        self.pending.extend(self.chunker.add(block, rows))
        self._settle_stats()
        self.flush()

    def finish_harvest(self) -> None:
        self.harvest_done = True
        self.pending.extend(self.chunker.finish())
        self._settle_stats()
        self.flush()

    def _settle_stats(self) -> None:
        if self.stats is None and self.chunker.norm_ready and self.chunker.norm:
            self.stats = self.estimate(self.chunker.norm)
            self.chunker.norm = []  # the pieces kept their blocks alive only for this

    def flush(self) -> None:
        """Append pending chunks while the log has room; finish the log when all are in."""
        while self.pending:
            if self.log.full and not self.log.release():
                break
            chunk = self.pending.popleft()
            self.log.append(chunk, chunk.rows)
        if self.harvest_done and not self.pending and not self.log.finished:
            self.log.finish()
            self.log.release()

    def commit(self, trainer_id: str, cursor: Cursor) -> list[Chunk[Handle]]:
        released = self.log.commit(trainer_id, cursor)
        self.flush()
        return released
