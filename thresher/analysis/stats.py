"""Streaming per-feature and per-SAE statistics, computed with frozen weights.

`SAEStats` accumulates, batch by batch, everything the Parquet files need: per-feature firing
counts, activation sums and maxima, and the sums behind reconstruction metrics. Sums are kept in
float64 so the result does not depend on how the rows were batched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# A feature is dense when it fires on more than this share of rows (SAEBench's thresholds).
DENSE_THRESHOLDS = (0.01, 0.1)


class SAEStats:
    """Accumulates statistics of one SAE over a stream of (x, f, x_hat) batches."""

    def __init__(self, d_in: int, d_sae: int) -> None:
        self.d_in, self.d_sae = d_in, d_sae
        self.rows = 0
        self.fire_count = torch.zeros(d_sae, dtype=torch.int64)
        self.act_sum = torch.zeros(d_sae, dtype=torch.float64)
        self.act_max = torch.zeros(d_sae, dtype=torch.float64)
        self.sq_err = 0.0  # sum over rows of ||x - x_hat||^2
        self.x_sum = torch.zeros(d_in, dtype=torch.float64)
        self.x_sq = 0.0  # sum over rows of ||x||^2
        self.l0_sum = 0.0
        self.l1_sum = 0.0

    @torch.no_grad()
    def update(self, x: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor) -> None:
        x, f, x_hat = x.double().cpu(), f.double().cpu(), x_hat.double().cpu()
        active = f > 0
        self.rows += len(x)
        self.fire_count += active.sum(0)
        self.act_sum += f.sum(0)
        self.act_max = torch.maximum(self.act_max, f.max(0).values if len(f) else self.act_max)
        self.sq_err += float(((x - x_hat) ** 2).sum())
        self.x_sum += x.sum(0)
        self.x_sq += float((x**2).sum())
        self.l0_sum += float(active.sum())
        self.l1_sum += float(f.abs().sum())

    def features(self) -> dict[str, np.ndarray]:
        rows = max(self.rows, 1)
        count = self.fire_count.numpy()
        rate = count / rows
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_active = np.where(count > 0, self.act_sum.numpy() / np.maximum(count, 1), 0.0)
            log10_density = np.where(count > 0, np.log10(rate), -np.inf)
        return {
            "feature": np.arange(self.d_sae, dtype=np.int32),
            "fire_count": count.astype(np.int64),
            "firing_rate": rate.astype(np.float64),
            "log10_density": log10_density.astype(np.float64),
            "mean_act": (self.act_sum.numpy() / rows).astype(np.float64),
            "mean_act_when_active": mean_active.astype(np.float64),
            "max_act": self.act_max.numpy().astype(np.float64),
            "is_dead": count == 0,
            "is_dense": rate > DENSE_THRESHOLDS[1],
        }

    def summary(self) -> SummaryMetrics:
        rows = max(self.rows, 1)
        mean = self.x_sum / rows
        total_var = self.x_sq - rows * float((mean**2).sum())  # sum_t ||x_t - mean||^2
        count = self.fire_count.numpy()
        rate = count / rows
        return SummaryMetrics(
            eval_rows=self.rows,
            mse=self.sq_err / (rows * self.d_in),
            nmse=self.sq_err / total_var if total_var > 0 else float("nan"),
            fve=1.0 - self.sq_err / total_var if total_var > 0 else float("nan"),
            l0=self.l0_sum / rows,
            l1=self.l1_sum / rows,
            dead_fraction=float((count == 0).mean()),
            dense_fraction_1pct=float((rate > DENSE_THRESHOLDS[0]).mean()),
            dense_fraction_10pct=float((rate > DENSE_THRESHOLDS[1]).mean()),
        )


@dataclass(frozen=True)
class SummaryMetrics:
    eval_rows: int
    mse: float  # mean over rows and dims of (x - x_hat)^2, raw activation units
    nmse: float  # sum ||x - x_hat||^2 / sum ||x - mean||^2
    fve: float  # fraction of variance explained = 1 - nmse
    l0: float
    l1: float
    dead_fraction: float  # features that never fired on the evaluation rows
    dense_fraction_1pct: float
    dense_fraction_10pct: float
