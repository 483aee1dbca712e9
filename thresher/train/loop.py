"""The training loop of one trainer along the stream, shared by the Ray and inline executors.

`TrainLoop.advance()` steps the trainer on batches until it finishes or the next batch is not
in the log yet; the executor decides what to do while blocked (the Ray actor waits, the inline
executor harvests more). Checkpoints commit the cursor to the log, which is what lets the log
release chunks; a blocked trainer whose log is full checkpoints early so the pump can go on.
A checkpoint the disk has no room for fails with CheckpointWriteError; the previous checkpoint
stays whole (the writes are atomic), so the run can be resumed once there is room.
"""

from __future__ import annotations

import errno
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from thresher.errors import UserError
from thresher.stream.block import ActivationBlock
from thresher.stream.log import Cursor
from thresher.stream.reader import BatchReader, EndOfStream, NotReady, example_id_entropy_bits
from thresher.train.trainer import Trainer

# Committed by a finished trainer: past every group, so it never holds a chunk back.
CURSOR_DONE = Cursor(group=2**62, offset=0)

Status = Literal["finished", "blocked"]


class CheckpointWriteError(UserError, OSError):
    """A checkpoint the disk had no room for; the previous checkpoint is intact."""


@dataclass
class LoopCounters:
    batches: int = 0
    entropy_bits_sum: float = 0.0
    entropy_bits_min: float = float("inf")
    batch_rows: int = 0
    checkpoints: int = 0
    skipped_batches: int = 0  # batches with NaN or Inf activations, never trained on
    resumed_from_step: int = 0  # > 0 when this trainer restarted from a checkpoint
    seconds: float = 0.0  # time spent stepping (not waiting)
    wait_seconds: float = 0.0  # time spent getting the next batch: waits for the log, gathers
    # Wall-clock times (epoch seconds) of the first batch stepped and of the finish: the
    # trainer's throughput, waits for the log included, without its start-up.
    first_batch_at: float = 0.0
    finished_at: float = 0.0
    last_metrics: dict[str, list[float]] = field(default_factory=dict)
    # A running hash of every batch's (example_id, position) rows, in order: trainers of one
    # stream, and both executors, must end with the same digest.
    digest: Any = field(default_factory=hashlib.sha256)

    def summary(self) -> LoopSummary:
        mean = self.entropy_bits_sum / self.batches if self.batches else float("nan")
        return LoopSummary(
            batches=self.batches, checkpoints=self.checkpoints,
            skipped_nonfinite_batches=self.skipped_batches,
            resumed_from_step=self.resumed_from_step, step_seconds=self.seconds,
            wait_seconds=self.wait_seconds, first_batch_at=self.first_batch_at,
            finished_at=self.finished_at, example_id_entropy_bits_mean=mean,
            example_id_entropy_bits_min=self.entropy_bits_min if self.batches else float("nan"),
            example_id_entropy_bits_max_possible=float(np.log2(max(self.batch_rows, 1))),
            last_metrics=dict(self.last_metrics), batch_digest=self.digest.hexdigest())


@dataclass(frozen=True)
class LoopSummary:
    """A trainer's loop at its end (run.json's `trainers.<id>`, with the session's counters)."""

    batches: int
    checkpoints: int
    skipped_nonfinite_batches: int
    resumed_from_step: int
    step_seconds: float  # stepping
    wait_seconds: float  # getting the next batch
    first_batch_at: float
    finished_at: float
    # Shuffle quality: entropy of example ids per batch vs its maximum log2(batch rows).
    example_id_entropy_bits_mean: float
    example_id_entropy_bits_min: float
    example_id_entropy_bits_max_possible: float
    last_metrics: dict[str, list[float]]
    batch_digest: str


class TrainLoop:
    def __init__(self, trainer: Trainer, reader: BatchReader[Any],
                 commit: Callable[[Cursor], None], checkpoint_every: int,
                 on_step: Callable[[int], None] | None = None) -> None:
        self.trainer = trainer
        self.reader = reader
        self.commit = commit
        self.checkpoint_every = checkpoint_every
        self.on_step = on_step  # told the step count after every step (progress, restarts)
        self.committed = reader.cursor
        self.checkpointed_step = trainer.step  # the step of the newest complete checkpoint
        self.done = False
        self.counters = LoopCounters(resumed_from_step=trainer.step)

    def advance(self) -> Status:
        while not self.done:
            if self.trainer.finished:
                self._finish()
                break
            asked = time.perf_counter()
            try:
                leased = self.reader.next_batch()
            except NotReady:
                return "blocked"
            except EndOfStream:
                self._finish()
                break
            finally:
                self.counters.wait_seconds += time.perf_counter() - asked
            # Released once the step is done: the step reads its metrics back to the host,
            # which waits for the batch's copy to a GPU too, so the rows may then be reused.
            with leased as batch:
                if not np.isfinite(batch.float32()).all():
                    # A NaN or Inf row would poison every SAE of the bank: skip it, count it.
                    self.counters.skipped_batches += 1
                    continue
                start = time.perf_counter()
                metrics = self.trainer.train_step(batch)
                self.counters.seconds += time.perf_counter() - start
                self._count(batch, metrics)
            if self.on_step is not None:
                self.on_step(self.trainer.step)
            if self.trainer.step % self.checkpoint_every == 0:
                self.checkpoint()
        return "finished"

    def checkpoint(self) -> None:
        """Save every SAE here and tell the log; a no-op if nothing moved since the last one."""
        cursor = self.reader.cursor
        if cursor == self.committed and self.counters.checkpoints:
            return
        try:
            self.trainer.save_checkpoint(cursor)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            run_dir = self.trainer.run_dir
            kept = (f"The previous checkpoint (step {self.checkpointed_step}) is intact"
                    if self.checkpointed_step else "There is no earlier checkpoint to keep")
            raise CheckpointWriteError(
                exc.errno,
                f"trainer {self.trainer.trainer_id}: no room on the disk for the checkpoint at "
                f"step {self.trainer.step} under {run_dir} ({exc.strerror}). {kept}: free some "
                "space, or move the run to a larger disk, then continue with "
                f"`thresher run --resume {run_dir}`") from exc
        self.commit(cursor)
        self.committed = cursor
        self.checkpointed_step = self.trainer.step
        self.counters.checkpoints += 1

    def _finish(self) -> None:
        self.counters.finished_at = time.time()
        self.checkpoint()
        self.commit(CURSOR_DONE)
        self.done = True

    def _count(self, batch: ActivationBlock, metrics: dict[str, np.ndarray]) -> None:
        c = self.counters
        if not c.batches:
            c.first_batch_at = time.time()
        bits = example_id_entropy_bits(batch.example_id)
        c.batches += 1
        c.entropy_bits_sum += bits
        c.entropy_bits_min = min(c.entropy_bits_min, bits)
        c.batch_rows = max(c.batch_rows, len(batch))
        c.digest.update(np.ascontiguousarray(batch.example_id, dtype=np.int64).tobytes())
        c.digest.update(np.ascontiguousarray(batch.position, dtype=np.int32).tobytes())
        c.last_metrics = {k: np.asarray(v).tolist() for k, v in metrics.items()}
