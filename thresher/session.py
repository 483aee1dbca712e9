"""What both executors do with a trainer on a stream, written once (a stream's inputs open
and close in thresher/harvest/inputs.py).

`TrainerSession` is one trainer on a stream: its `Trainer`, a `BatchReader` over the log and the
`TrainLoop` that steps them, then the export and the held-out evaluation. The executors differ
only in what they hand it: how a group is fetched and its blocks loaded (the log and the
blocks themselves inline; remote calls and object refs on Ray), and what to do while it is
blocked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from thresher.analysis.evaluate import TrainerResult, trainer_result
from thresher.config import Config, TrainerPlan, torch_threads
from thresher.stream.block import ActivationBlock
from thresher.stream.log import Cursor
from thresher.stream.reader import BatchReader, Fetch, Load
from thresher.stream.stats import StreamStats
from thresher.train.loop import Status, TrainLoop
from thresher.train.trainer import Trainer, pinned_empty


class TrainerSession:
    """One trainer along one stream, from its first batch to its result."""

    def __init__(self, cfg: Config, stream_id: str, plan: TrainerPlan, stats: StreamStats,
                 run_dir: str | Path, device: str, fetch: Fetch[Any], load: Load[Any],
                 commit: Callable[[Cursor], object], prefetch: bool = False,
                 on_step: Callable[[int], object] | None = None,
                 on_points: Callable[[list[dict[str, Any]]], object] | None = None) -> None:
        self.cfg, self.stream_id, self.plan = cfg, stream_id, plan
        self.started = time.perf_counter()
        # Restores from the trainer's own checkpoints, so a restarted trainer resumes here.
        self.trainer = Trainer(plan.trainer_id, plan.saes, cfg.train, stats, run_dir,
                               device=device, hook_name=plan.hook)
        # A CUDA trainer gathers into pinned memory, whence batches go to the GPU directly.
        on_cuda = self.trainer.bank.device.type == "cuda"
        # Gathers take the trainer's threads where those are free: between steps, or while a
        # GPU steps. A gather prefetched beside a CPU step takes one, not to fight the step's
        # threads for the cores (stored source on 2 cores: Ray's rows/s 0.91-0.92x inline's
        # with the step's two threads, 0.96x with one).
        threads = torch_threads(cfg, "trainer") if on_cuda or not prefetch else 1
        self.reader = BatchReader(fetch, load, cfg.train.batch_size,
                                  self.trainer.resumed_cursor, hook=plan.hook,
                                  prefetch=prefetch, empty=pinned_empty if on_cuda else np.empty,
                                  threads=threads)

        def stepped(step: int) -> None:
            if on_step is not None:
                on_step(step)
            if on_points is not None and (points := self.trainer.new_curve_points()):
                on_points(points)  # each curve point as soon as its window closes

        self.loop = TrainLoop(self.trainer, self.reader, commit=commit,
                              checkpoint_every=cfg.train.checkpoint_every, on_step=stepped)

    @property
    def done(self) -> bool:
        return self.loop.done

    def advance(self, log_full: Callable[[], bool]) -> Status:
        """Step until finished or blocked; a blocked trainer whose log is full checkpoints, so
        its commit lets the pump go on."""
        status = self.loop.advance()
        if status == "blocked" and log_full():
            self.loop.checkpoint()
        return status

    def copies_per_row(self) -> dict[str, float]:
        """Copies of a row this trainer made, by stage, per row it read: the gather into the
        group's order, joining a batch that spans two groups, making the tensor (a copy out
        of read-only memory, widening, the pinned staging and the transfer to a GPU). The
        harvest side's copies are the stream's (`harvest.copies_per_row`)."""
        rows = max(1, self.reader.rows_out)
        return {"gather": self.reader.groups.gathered_rows / rows,
                "batch": self.reader.joined_rows / rows,
                "tensor": self.trainer.tensor_copied_rows / rows}

    def finish(self, holdout: ActivationBlock, counters: dict[str, Any] | None = None
               ) -> TrainerResult:
        """Export every SAE and evaluate the bank with frozen weights on the held-out rows."""
        self.reader.close()
        self.trainer.export()
        return trainer_result(self.cfg, self.stream_id, self.trainer, holdout,
                              {**self.loop.counters.to_dict(),
                               "gather_seconds": self.reader.groups.gather_seconds,
                               "copies_per_row": self.copies_per_row(),
                               **(counters or {})},
                              time.perf_counter() - self.started)
