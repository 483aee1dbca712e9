"""The pump: harvested blocks in, chunk handles into the broadcast log, as room frees up.

Plain logic (Chunker + BroadcastLog + counters) that never reads an activation: it sees each
harvested block as a handle, its row count and a small report of the forward that made it. The
inline executor drives it with the blocks themselves as handles, the Ray stream actor with
object refs it never fetches.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from thresher.config import Config, StreamPlan
from thresher.stream.chunker import Chunk, Chunker, Piece
from thresher.stream.log import BroadcastLog, Cursor, Handle

Stats = TypeVar("Stats")


@dataclass(frozen=True)
class HarvestReport:
    """What the harvester says about one block: its forwards, examples, unreadable inputs."""

    forward_calls: int = 1
    examples: int = 0
    unreadable_examples: tuple[int, ...] = ()  # examples whose input could not be read
    rows: int = 0  # rows kept
    nonfinite_rows: int = 0  # rows dropped for NaN or Inf
    nonfinite_examples: tuple[int, ...] = ()  # the examples those rows came from
    # Copies of each row made between the backbone and where trainers read it: the NaN drop,
    # a split of several hooks into columns of their own, the object store's write.
    row_copies: int = 0


NAMED = 20  # inputs named in run.json (unreadable ones, those of dropped rows), at most


@dataclass
class HarvestCounters:
    forward_calls: int = 0
    blocks: int = 0
    rows: int = 0
    examples: int = 0  # examples are never split between input batches, so blocks add up
    seconds: float = 0.0
    # Inputs skipped because they could not be read: named where listing found them ("a.edf:
    # why"), and the examples the CPU stage could not decode (all of them: the manifest flags
    # each; `name_unreadable` names the first in run.json).
    unreadable_listed: list[str] = field(default_factory=list)
    unreadable_examples: list[int] = field(default_factory=list)
    unreadable_named: list[str] = field(default_factory=list)
    nonfinite_rows: int = 0  # rows dropped before chunking for NaN or Inf
    nonfinite_examples: list[int] = field(default_factory=list)  # their examples, capped
    copied_rows: int = 0  # rows x HarvestReport.row_copies, summed over blocks
    # Wall-clock times (epoch seconds) the pump started and the harvest ended: show whether
    # the streams of a run ran one after another or together.
    started_at: float = field(default_factory=time.time)
    finished_at: float = 0.0

    @property
    def unreadable_inputs(self) -> int:
        return len(self.unreadable_listed) + len(self.unreadable_examples)

    def to_dict(self) -> dict[str, Any]:
        named = self.unreadable_named or self.unreadable_listed[:NAMED]
        return {"forward_calls": self.forward_calls, "blocks": self.blocks, "rows": self.rows,
                "examples": self.examples, "seconds": self.seconds,
                "unreadable_inputs": self.unreadable_inputs, "unreadable_named": named,
                "nonfinite_rows": self.nonfinite_rows,
                "nonfinite_examples": self.nonfinite_examples,
                "copies_per_row": self.copied_rows / self.rows if self.rows else 0.0,
                "started_at": self.started_at,
                "finished_at": self.finished_at}


class Pump(Generic[Handle, Stats]):
    """Chunks harvested blocks and appends the chunks to the log as room frees up.

    `estimate(pieces)` turns the normalisation rows into the stream statistics (computed on the
    spot inline, a remote task on Ray); it is called once, when those rows are in.
    """

    def __init__(self, cfg: Config, stream: StreamPlan,
                 estimate: Callable[[list[Piece[Handle]]], Stats]) -> None:
        s, t = cfg.stream, cfg.train
        steps = -(-t.rows // t.batch_size)
        self.chunker: Chunker[Handle] = Chunker(s.chunk_rows, s.holdout_rows, s.norm_rows,
                                                wanted_rows=steps * t.batch_size)
        self.log: BroadcastLog[Chunk[Handle]] = BroadcastLog(
            s.capacity_chunks, s.mix_chunks, cfg.run.seed,
            [t.trainer_id for t in stream.trainers])
        self.estimate = estimate
        self.stats: Stats | None = None  # once the normalisation rows are in
        self.pending: deque[Chunk[Handle]] = deque()
        self.counters = HarvestCounters()
        self.harvest_done = False

    def add(self, block: Handle, rows: int, report: HarvestReport) -> None:
        c = self.counters
        c.blocks += 1
        c.rows += rows
        c.forward_calls += report.forward_calls
        c.examples += report.examples
        c.unreadable_examples.extend(report.unreadable_examples)
        c.nonfinite_rows += report.nonfinite_rows
        c.nonfinite_examples = (c.nonfinite_examples + list(report.nonfinite_examples))[:NAMED]
        c.copied_rows += rows * report.row_copies
        self.pending.extend(self.chunker.add(block, rows))
        self._settle_stats()
        self.flush()

    def finish_harvest(self) -> None:
        self.harvest_done = True
        self.counters.finished_at = time.time()
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
