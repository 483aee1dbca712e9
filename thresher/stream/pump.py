"""The pump: harvested blocks in, chunk handles into the broadcast log, as room frees up.

Plain logic (Chunker + BroadcastLog + counters). The inline executor drives it with the blocks
themselves as handles; the Ray stream actor with object refs.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic

import numpy as np

from thresher.config import Config, StreamPlan
from thresher.stream.block import ActivationBlock
from thresher.stream.chunker import Chunker
from thresher.stream.log import BroadcastLog, Cursor, Handle
from thresher.stream.stats import StreamStats


@dataclass
class HarvestCounters:
    forward_calls: int = 0
    blocks: int = 0
    rows: int = 0
    examples: set[int] = field(default_factory=set)
    seconds: float = 0.0
    unreadable_inputs: int = 0  # images or recordings skipped because they could not be read
    # Wall-clock times (epoch seconds) the pump started and the harvest ended: show whether
    # the streams of a run ran one after another or together.
    started_at: float = field(default_factory=time.time)
    finished_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"forward_calls": self.forward_calls, "blocks": self.blocks, "rows": self.rows,
                "examples": len(self.examples), "seconds": self.seconds,
                "unreadable_inputs": self.unreadable_inputs, "started_at": self.started_at,
                "finished_at": self.finished_at}


class Pump(Generic[Handle]):
    """Chunks harvested blocks and appends them to the log as room frees up."""

    def __init__(self, cfg: Config, stream: StreamPlan, put: Callable[[ActivationBlock], Handle]):
        s, t = cfg.stream, cfg.train
        steps = -(-t.tokens // t.batch_size)
        self.chunker = Chunker(s.chunk_rows, s.holdout_rows, s.norm_rows,
                               wanted_rows=steps * t.batch_size)
        self.log: BroadcastLog[Handle] = BroadcastLog(
            s.capacity_chunks, s.mix_chunks, cfg.run.seed,
            [t.trainer_id for t in stream.trainers])
        self.put = put
        self.pending: deque[ActivationBlock] = deque()
        self.counters = HarvestCounters()
        self.harvest_done = False

    def add(self, block: ActivationBlock, forward_calls: np.ndarray | None = None,
            unreadable: int = 0) -> None:
        self.counters.unreadable_inputs += unreadable
        self.counters.blocks += 1
        self.counters.rows += len(block)
        self.counters.examples.update(np.unique(block.example_id).tolist())
        if forward_calls is not None:
            self.counters.forward_calls += len(np.unique(forward_calls))
        self.pending.extend(self.chunker.add(block))
        self.flush()

    def finish_harvest(self) -> None:
        self.harvest_done = True
        self.counters.finished_at = time.time()
        self.pending.extend(self.chunker.finish())
        self.flush()

    def flush(self) -> None:
        """Append pending chunks while the log has room; finish the log when all are in."""
        while self.pending:
            if self.log.full and not self.log.release():
                break
            chunk = self.pending.popleft()
            self.log.append(self.put(chunk), len(chunk))
        if self.harvest_done and not self.pending and not self.log.finished:
            self.log.finish()
            self.log.release()

    @property
    def stats(self) -> dict[str, StreamStats] | None:
        """Each hook's input scale and decoder-bias estimate, once the first rows are in."""
        return self.chunker.stats

    def commit(self, trainer_id: str, cursor: Cursor) -> list[Handle]:
        released = self.log.commit(trainer_id, cursor)
        self.flush()
        return released
