"""Training curves: one point per SAE every `every` steps (`TrainingCurves`, in the trainer),
gathered on the driver while the run goes (`CurveLog`) into stats/curves.parquet and wandb.

Two sources, both optional per step:

- `record_step(metrics, rows)`: the bank's own per-step metrics (loss, training-unit MSE, L0,
  gradient norm, AuxK loss, batch MonoScore, dead fraction over train.dead_window), free: the
  step computes them anyway. A point holds their mean over the window's steps.
- `observe(x, latents)`: a batch's latents and reconstructions, from which a
  `SummaryStatistics` per SAE accumulates the window's FVE, NMSE, MSE, L2 ratio, L0, L1, dead
  fraction (features silent over the window) and dense fractions, in raw units. It costs an
  update per SAE (benchmarks/stats_overhead.py); a caller that has no latents for a step (no
  second forward) simply does not call it, and those columns are NaN for the window.

Rows are plain dicts of CURVES_SCHEMA (thresher/analysis/parquet.py, docs/formats.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thresher.analysis.stats import Batch, Rows, SummaryStatistics

# The bank's per-step metrics (thresher.train.bank.METRIC_NAMES) as curve columns.
STEP_METRICS = {"loss": "train_loss", "mse": "train_sq_err_per_row", "l0": "train_l0",
                "grad_norm": "train_grad_norm", "aux_loss": "train_aux_loss",
                "mono_score": "train_mono_score", "dead_fraction": "train_dead_fraction"}
# SummaryMetrics fields of the window's SummaryStatistics, as curve columns.
WINDOW_METRICS = {"eval_rows": "window_rows", "fve": "fve", "nmse": "nmse",
                  "mse_per_element": "mse_per_element", "sq_err_per_row": "sq_err_per_row",
                  "l2_ratio": "l2_ratio", "l0": "l0", "l1": "l1",
                  "dead_fraction": "window_dead_fraction",
                  "dense_fraction_1pct": "dense_fraction_1pct",
                  "dense_fraction_10pct": "dense_fraction_10pct"}


class TrainingCurves:
    """Curve points of the SAEs of one trainer (`sae_ids` in bank order)."""

    def __init__(self, trainer_id: str, sae_ids: Sequence[str], d_in: int,
                 d_sae: Sequence[int], every: int = 100, first_step: int = 0) -> None:
        if every <= 0:
            raise ValueError(f"curve points every {every} steps: give a positive number")
        if len(sae_ids) != len(d_sae):
            raise ValueError(f"{len(sae_ids)} SAE ids but {len(d_sae)} widths")
        self.trainer_id, self.sae_ids = trainer_id, list(sae_ids)
        self.d_in, self.d_sae = d_in, list(d_sae)
        self.every = every
        self.step = first_step  # steps taken so far (a resumed trainer starts at its step)
        self.rows_seen = 0
        self.rows: list[dict[str, Any]] = []
        self._reset()

    def _reset(self) -> None:
        self._steps = 0
        self._metric_sum = {name: np.zeros(len(self.sae_ids)) for name in STEP_METRICS}
        self._stats = [SummaryStatistics(self.d_in, n) for n in self.d_sae]

    @torch.no_grad()
    def observe(self, x: torch.Tensor,
                latents: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """One batch: raw x [B, d_in] and, per SAE in bank order, (f [B, d_sae], x_hat)."""
        rows = Rows.of(x)
        for stats, (f, x_hat) in zip(self._stats, latents, strict=True):
            stats.update(Batch.of_dense(rows, f, x_hat))

    def record_step(self, metrics: Mapping[str, np.ndarray], rows: int) -> list[dict[str, Any]]:
        """After each optimiser step: its per-SAE metrics and batch rows. Returns the points
        completed by this step (one per SAE every `every` steps, else none)."""
        self.step += 1
        self.rows_seen += rows
        self._steps += 1
        for name in STEP_METRICS:
            if name in metrics:
                self._metric_sum[name] += np.asarray(metrics[name], dtype=np.float64)
            else:
                self._metric_sum[name] += np.nan
        if self.step % self.every == 0:
            return self._close()
        return []

    def finish(self) -> list[dict[str, Any]]:
        """Close a partial last window; returns its points (none if it is empty)."""
        return self._close() if self._steps else []

    def _close(self) -> list[dict[str, Any]]:
        points = []
        for i, sae_id in enumerate(self.sae_ids):
            point: dict[str, Any] = {"trainer_id": self.trainer_id, "sae_id": sae_id,
                                     "step": self.step, "rows_seen": self.rows_seen,
                                     "window_steps": self._steps}
            for name, column in STEP_METRICS.items():
                point[column] = float(self._metric_sum[name][i] / self._steps)
            stats = self._stats[i]
            summary = stats.metrics().__dict__ if stats.rows else {}
            for name, column in WINDOW_METRICS.items():
                point[column] = float(summary.get(name, math.nan))
            point["window_rows"] = stats.rows  # 0 where no batch of the window was observed
            points.append(point)
        self.rows.extend(points)
        self._reset()
        return points


class CurveLog:
    """The driver's record of every SAE's curve points while a run goes.

    Points arrive as trainers close their windows (forwarded by the stream actor on Ray, or
    handed over directly inline). Each is kept by (sae_id, step): a restarted or resumed
    trainer redoes the steps after its checkpoint and its new point replaces the old one.
    `save` writes stats/curves.parquet, at most every `save_every` seconds unless forced, so a
    run that dies keeps its curves; a resumed run starts from the file its first part left.
    `logger` (a WandbLogger) gets each SAE's points as they come, in step order.
    """

    def __init__(self, path: str | Path, logger: Any = None, save_every: float = 10.0) -> None:
        from thresher import uri_io

        self.path, self.logger, self.save_every = Path(path), logger, save_every
        self.points: dict[tuple[str, int], dict[str, Any]] = {}
        self.logged_step: dict[str, int] = {}  # the last step sent to wandb, per SAE
        self.newest: dict[str, dict[str, Any]] = {}  # the newest point of each SAE
        self.dirty, self.saved_at = False, -math.inf
        if uri_io.is_file(self.path):  # a resumed run: the curves of its first part
            import pyarrow.parquet as pq

            for point in pq.read_table(self.path).to_pylist():
                self.points[(point["sae_id"], point["step"])] = point

    def add(self, points: Iterable[Mapping[str, Any]]) -> None:
        fresh = sorted(points, key=lambda p: (p["step"], p["sae_id"]))
        for point in fresh:
            kept = self.points[(str(point["sae_id"]), int(point["step"]))] = dict(point)
            self.newest[kept["sae_id"]] = kept
        self.dirty |= bool(fresh)
        if self.logger is not None:
            # wandb takes each run's steps in increasing order only: a redone step is not sent.
            new = [p for p in fresh if p["step"] > self.logged_step.get(p["sae_id"], -1)]
            for p in new:
                self.logged_step[p["sae_id"]] = int(p["step"])
            self.logger.log_points(new)
        self.save()

    def rows(self) -> list[dict[str, Any]]:
        return [self.points[key] for key in sorted(self.points)]

    def save(self, force: bool = False) -> None:
        if not self.dirty or (not force and time.monotonic() - self.saved_at < self.save_every):
            return
        from thresher.analysis.parquet import CURVES_SCHEMA, table_from_rows
        from thresher.uri_io import write_table_atomic

        write_table_atomic(self.path, table_from_rows(self.rows(), CURVES_SCHEMA))
        self.dirty, self.saved_at = False, time.monotonic()
