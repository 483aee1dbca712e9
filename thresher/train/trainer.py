"""Trainer: one trainer's bank of SAEs, its step counters, checkpoints and export.

A plain class (no Ray, no stream loop): `TrainLoop` feeds it batches, the Ray actor and the
inline executor place it. It restores from its SAEs' checkpoints in `__init__`, so a restarted
actor resumes where its last complete checkpoint left off.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from thresher import uri_io
from thresher.config import SAEConfig, TrainConfig, train_steps
from thresher.stream.block import ActivationBlock
from thresher.stream.log import Cursor
from thresher.stream.stats import StreamStats
from thresher.train.bank import SAEBank
from thresher.train.checkpoint import (
    checkpoint_dir,
    export_sae,
    find_restore_point,
    load_generation,
    read_checkpoint_info,
    save_sae_checkpoint,
)

log = logging.getLogger(__name__)


class StepCurves(Protocol):
    """A trainer's training curves: each step's metrics, the latents of the batches a curve
    window observes, the points closed so far."""

    rows: list[dict[str, Any]]

    def observe(self, x: torch.Tensor,
                latents: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None: ...

    def record_step(self, metrics: Mapping[str, np.ndarray], rows: int
                    ) -> list[dict[str, Any]]: ...

    def finish(self) -> list[dict[str, Any]]: ...


class Trainer:
    def __init__(self, trainer_id: str, saes: Sequence[SAEConfig], train: TrainConfig,
                 stats: StreamStats, run_dir: str | Path, device: str = "cpu",
                 hook_name: str = "") -> None:
        self.trainer_id = trainer_id
        self.saes = list(saes)
        self.train = train
        self.stats = stats
        # A URI (a trainer on another node) or a local path: the folder written through.
        self.run_dir = uri_io.working_dir(run_dir)
        self.hook_name = hook_name
        self.total_steps = train_steps(train)
        self.bank = SAEBank(self.saes, stats, train, self.total_steps, device=device)
        self.rows_seen = 0
        self.tensor_copied_rows = 0  # rows x copies batch_tensor made of them
        self.resumed_cursor = Cursor()
        self._restore()
        # Curve points from here on, where the caller asks for them (`track_curves`).
        self.curves: StepCurves | None = None
        self._points_sent = 0

    @property
    def step(self) -> int:
        return self.bank.steps_taken

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps

    def _restore(self) -> None:
        for sae in self.saes:  # a remote run's checkpoints, into this node's working copy
            uri_io.pull(checkpoint_dir(self.run_dir, sae.sae_id))
        point = find_restore_point(self.run_dir, self.saes, self.stats.scale)
        if point is None:
            partial = [sae.sae_id for sae in self.saes
                       if read_checkpoint_info(self.run_dir, sae.sae_id) is not None]
            if partial:
                log.warning("trainer %s: only %s of its SAEs have checkpoints; starting every "
                            "SAE from step 0", self.trainer_id, partial)
            return
        for sae in self.saes:
            self.bank.set_sae_state(sae.sae_id,
                                    load_generation(self.run_dir, sae.sae_id, point[sae.sae_id]))
        first = next(iter(point.values()))
        self.bank.steps_taken = first.step
        self.rows_seen = first.rows_seen
        self.resumed_cursor = first.cursor
        log.info("trainer %s resumed at step %d (cursor %s)", self.trainer_id, first.step,
                 first.cursor)

    def train_step(self, batch: ActivationBlock) -> dict[str, np.ndarray]:
        """One step of every SAE on `batch`; per-SAE metrics in the order of `saes`."""
        if self.finished:
            raise RuntimeError(f"trainer {self.trainer_id} has already taken all "
                               f"{self.total_steps} steps")
        x, copies = batch_tensor(batch, self.bank.device)
        self.tensor_copied_rows += copies * len(batch)
        metrics = self.bank.step(x)
        self.rows_seen += len(batch)
        if self.curves is None:
            return metrics
        if self._observed_for_curves():
            # A no-grad pass with the weights just updated: the window's FVE, L0, dense
            # fractions. Only the window's last few batches, so it costs a few percent.
            self.curves.observe(x, self.bank.encode_decode(x))
        self.curves.record_step(metrics, len(batch))
        return metrics

    def _observed_for_curves(self) -> bool:
        every = self.train.curve_every
        left_in_window = -self.step % every  # steps after this one until the point closes
        left_in_run = self.total_steps - self.step
        return min(left_in_window, left_in_run) < min(self.train.curve_batches, every)

    def track_curves(self, curves: StepCurves) -> None:
        """Record training curves from the current step on (a restarted trainer: those since
        its restart) into `curves` (thresher.analysis.curves.TrainingCurves)."""
        self.curves = curves

    def new_curve_points(self) -> list[dict]:
        """The curve points closed since the last call (for the driver, while the run goes)."""
        if self.curves is None:
            return []
        points = self.curves.rows[self._points_sent:]
        self._points_sent = len(self.curves.rows)
        return points

    def finish_curves(self) -> list[dict]:
        """Close the last, partial curve window; returns every point of this process."""
        if self.curves is None:
            return []
        self.curves.finish()
        return self.curves.rows

    def save_checkpoint(self, cursor: Cursor) -> None:
        """Checkpoint every SAE of this trainer at the current step, `cursor` its stream place."""
        for sae in self.saes:
            save_sae_checkpoint(self.run_dir, sae, self.bank.get_sae_state(sae.sae_id),
                                step=self.step, rows_seen=self.rows_seen, cursor=cursor,
                                input_scale=self.stats.scale)

    def export(self) -> list[Path]:
        """The final SAELens-format files of every SAE; returns the SAEs' folders."""
        folders = []
        for sae in self.saes:
            record = {"sae": sae.to_dict(), "trainer_id": self.trainer_id, "step": self.step,
                      "rows_seen": self.rows_seen, "total_steps": self.total_steps}
            folders.append(export_sae(self.run_dir, sae, self.bank.inference_params(sae.sae_id),
                                      self.stats.scale, self.hook_name, record))
        return folders


def batch_tensor(batch: ActivationBlock, device: torch.device) -> tuple[torch.Tensor, int]:
    """A batch's activations as a float32 tensor on `device`, and the copies of its rows that
    took. None where none is needed: a gathered batch is writable float32 memory torch can
    share. bf16 rows cross to the device as bf16 (half the bytes) and widen there; on CUDA
    they go from pinned memory (the gather's own buffer where it was pinned,
    `pinned_empty`) without blocking."""
    copies = 0
    acts = batch.acts
    if not acts.flags.writeable:  # e.g. straight from Ray's object store
        acts, copies = acts.copy(), copies + 1
    x = torch.from_numpy(acts)
    if batch.bf16_bits:
        x = x.view(torch.bfloat16)
    elif x.dtype != torch.float32:
        x, copies = x.float(), copies + 1
    if device.type == "cuda":
        if not x.is_pinned():
            x, copies = x.pin_memory(), copies + 1
        x, copies = x.to(device, non_blocking=True), copies + 1
    if x.dtype != torch.float32:
        x, copies = x.float(), copies + 1
    return x, copies


def pinned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised host array in pinned (page-locked) memory, for a CUDA trainer's
    gathers: its batches then go to the GPU without a staging copy."""
    like = torch.from_numpy(np.empty(0, dtype=dtype))  # numpy's dtype in torch's words
    return torch.empty(shape, dtype=like.dtype, pin_memory=True).numpy()
