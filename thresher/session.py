"""What both executors do with a trainer on a stream, written once (a stream's inputs open
and close in thresher/harvest/inputs.py).

`TrainerSession` is one trainer on a stream: its `Trainer`, a `BatchReader` over the log and the
`TrainLoop` that steps them, then the export and the held-out evaluation. The executors differ
only in the `TrainerStream` they hand it, the stream's service as a trainer sees it: in this
process (`LocalTrainerStream`, thresher/harvest/service.py) or through Ray calls and object
refs (`ActorTrainerStream`, thresher/distributed/trainer_actor.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from thresher.analysis.curves import TrainingCurves
from thresher.analysis.evaluate import (
    CopiesPerRow,
    TrainerCounters,
    TrainerPlacement,
    TrainerResult,
    trainer_result,
)
from thresher.config import Config, TrainerPlan, torch_threads
from thresher.stream.block import ActivationBlock
from thresher.stream.chunker import Chunk
from thresher.stream.log import Cursor, Group
from thresher.stream.reader import BatchReader
from thresher.stream.stats import StreamStats
from thresher.train.loop import Status, TrainLoop
from thresher.train.trainer import Trainer, pinned_empty

Handle = TypeVar("Handle")


class TrainerStream(Protocol[Handle]):
    """The stream as a trainer sees it: groups to fetch and their blocks to load, its cursor
    to commit, and its steps and curve points to report."""

    @property
    def prefetch(self) -> bool:
        """Fetch and gather the next group in a thread while this one trains."""
        ...

    @property
    def log_full(self) -> bool:
        """The log was full when a group was last not ready: checkpoint, to free room."""
        ...

    def fetch(self, g: int) -> Group[Chunk[Handle]]:
        """Group g; raises NotReady while it is incomplete, EndOfStream past the last."""
        ...

    def load(self, handles: Sequence[Handle]) -> Sequence[ActivationBlock]:
        """The blocks behind handles (this trainer's hook of them)."""
        ...

    def commit(self, cursor: Cursor) -> None: ...

    def step_taken(self, step: int) -> None: ...

    def add_curve_points(self, points: list[dict[str, Any]]) -> None:
        """Curve points as their windows close, for the driver."""
        ...


class TrainerSession:
    """One trainer along one stream, from its first batch to its result."""

    def __init__(self, cfg: Config, stream_id: str, plan: TrainerPlan, stats: StreamStats,
                 run_dir: str | Path, device: str, stream: TrainerStream[Any]) -> None:
        self.cfg, self.stream_id, self.plan = cfg, stream_id, plan
        self.stream = stream
        self.started = time.perf_counter()
        # Restores from the trainer's own checkpoints, so a restarted trainer resumes here.
        self.trainer = Trainer(plan.trainer_id, plan.saes, cfg.train, stats, run_dir,
                               device=device, hook_name=plan.hook)
        self.trainer.track_curves(TrainingCurves(
            plan.trainer_id, [s.sae_id for s in plan.saes], self.trainer.bank.d_in,
            [s.d_sae for s in plan.saes], every=cfg.train.curve_every,
            first_step=self.trainer.step))
        # A CUDA trainer gathers into pinned memory, whence batches go to the GPU directly.
        on_cuda = self.trainer.bank.device.type == "cuda"
        # Gathers take the trainer's threads where those are free: between steps, or while a
        # GPU steps. A gather prefetched beside a CPU step takes one, not to fight the step's
        # threads for the cores (benchmarks/ray_vs_inline.py measures both).
        prefetch = stream.prefetch
        threads = torch_threads(cfg, "trainer") if on_cuda or not prefetch else 1
        self.reader = BatchReader(stream.fetch, stream.load, cfg.train.batch_size,
                                  self.trainer.resumed_cursor, hook=plan.hook,
                                  prefetch=prefetch, empty=pinned_empty if on_cuda else np.empty,
                                  threads=threads)
        self.loop = TrainLoop(self.trainer, self.reader, commit=stream.commit,
                              checkpoint_every=cfg.train.checkpoint_every, on_step=self._stepped)

    def _stepped(self, step: int) -> None:
        self.stream.step_taken(step)
        if points := self.trainer.new_curve_points():
            self.stream.add_curve_points(points)  # each curve point as soon as its window closes

    @property
    def done(self) -> bool:
        return self.loop.done

    def advance(self) -> Status:
        """Step until finished or blocked; a blocked trainer whose log is full checkpoints, so
        its commit lets the pump go on."""
        status = self.loop.advance()
        if status == "blocked" and self.stream.log_full:
            self.loop.checkpoint()
        return status

    def copies_per_row(self) -> CopiesPerRow:
        """Copies of a row this trainer made, by stage, per row it read."""
        rows = max(1, self.reader.rows_out)
        return CopiesPerRow(gather=self.reader.groups.gathered_rows / rows,
                            batch=self.reader.joined_rows / rows,
                            tensor=self.trainer.tensor_copied_rows / rows)

    def finish(self, holdout: ActivationBlock,
               placement: TrainerPlacement | None = None) -> TrainerResult:
        """Export every SAE and evaluate the bank with frozen weights on the held-out rows."""
        self.reader.close()
        self.trainer.export()
        counters = TrainerCounters(loop=self.loop.counters.summary(),
                                   gather_seconds=self.reader.groups.gather_seconds,
                                   copies_per_row=self.copies_per_row(),
                                   placement=placement or TrainerPlacement())
        return trainer_result(self.cfg, self.stream_id, self.trainer, holdout, counters,
                              time.perf_counter() - self.started)
