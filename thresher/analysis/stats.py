"""What every per-SAE statistic is built on, accumulated over batches with frozen weights.

- `Rows`, `Batch`: one batch as the statistics see it (the SAE inputs in float64 with their ids
  and labels, prepared once for every SAE; one SAE's reconstruction and latent entries);
- `FeatureMoments`: per feature, firing counts, activation sum, sum of squares and extremes;
- `LabelCounts`: per feature and label, the labelled rows where it fired (stats/labels.parquet);
- `SummaryStatistics`: the moments plus the reconstruction sums behind `SummaryMetrics` (MSE,
  NMSE, FVE, L2 ratio, L0, L1, dead and dense fractions); training curves keep one per window.

The per-feature columns are computed by the statistics of feature_columns.py, which read these;
feature_statistics.py runs them all over an SAE's held-out rows. Sums are kept in float64, so
the result does not depend on how the rows were batched (tests/analysis/test_stats.py checks this).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from thresher.analysis.monoscore import unit_rows

# A feature is dense when it fires on more than this share of rows (SAEBench's thresholds).
DENSE_THRESHOLDS = (0.01, 0.1)


@dataclass(frozen=True)
class StatsOptions:
    top_n: int = 16  # max-activating examples kept per feature
    reservoir: int = 64  # firing rows sampled per feature (bottom-hash) for quantile samples
    quantiles: int = 8  # samples drawn from the reservoir at evenly spaced activation quantiles
    monoscore: bool = True


@dataclass
class Rows:
    """One batch of SAE inputs, with what every SAE's statistics need of it computed once:
    float64 rows, their norms and sums, unit rows (MonoScore's embedding), ids and labels."""

    x: torch.Tensor  # [B, d_in] float64, CPU
    example_id: np.ndarray  # int64 [B]
    position: np.ndarray  # int32 [B]
    label: np.ndarray | None  # int64 [B], -1 unknown
    norm: torch.Tensor  # [B] ||x||
    x_sum: torch.Tensor  # [d_in]
    x_sq: float  # sum of ||x||^2

    @classmethod
    def of(cls, x: torch.Tensor, example_id: np.ndarray | None = None,
           position: np.ndarray | None = None, label: np.ndarray | None = None,
           first_id: int = 0) -> Rows:
        """`x` [B, d_in]; example ids default to first_id, first_id + 1, ... (one per row)."""
        x64 = x.detach().cpu().double()
        n = len(x64)
        norm = torch.linalg.vector_norm(x64, dim=1)
        return cls(
            x=x64,
            example_id=(np.arange(first_id, first_id + n, dtype=np.int64) if example_id is None
                        else np.asarray(example_id, dtype=np.int64)),
            position=(np.zeros(n, dtype=np.int32) if position is None
                      else np.asarray(position, dtype=np.int32)),
            label=None if label is None else np.asarray(label, dtype=np.int64),
            norm=norm, x_sum=x64.sum(0), x_sq=float((norm * norm).sum()))

    @property
    def x_nonzero(self) -> torch.Tensor:
        return self.norm > 0

    @functools.cached_property
    def unit(self) -> torch.Tensor:
        """x/||x|| (0 for a zero row): MonoScore's embedding."""
        return unit_rows(self.x, self.norm)


@dataclass
class Batch:
    """One batch of one SAE: its inputs, its reconstruction and its latents as their nonzero
    entries, f[row[i], feature[i]] = value[i] and every other latent 0. Every per-feature sum,
    extreme and table is updated from the entries alone, so a sparse batch costs O(entries)."""

    rows: Rows
    x_hat: torch.Tensor  # [B, d_in] float64, CPU
    row: torch.Tensor  # int64 [E]
    feature: torch.Tensor  # int64 [E]
    value: torch.Tensor  # float64 [E], never 0
    dense: torch.Tensor | None = None  # the latents f [B, d_sae] when the caller had them

    @classmethod
    def of_dense(cls, rows: Rows, f: torch.Tensor, x_hat: torch.Tensor) -> Batch:
        """Dense latents f [B, d_sae], on any device (their entries are found there)."""
        entry_row, entry_feature = torch.nonzero(f, as_tuple=True)  # row-major
        return cls.of_entries(rows, x_hat, entry_row, entry_feature,
                              f[entry_row, entry_feature], dense=f)

    @classmethod
    def of_entries(cls, rows: Rows, x_hat: torch.Tensor, entry_row: torch.Tensor,
                   entry_feature: torch.Tensor, entry_value: torch.Tensor,
                   dense: torch.Tensor | None = None) -> Batch:
        """Entries in any order, each (row, feature) at most once; zero values are dropped."""
        row, feature = entry_row.detach().cpu().long(), entry_feature.detach().cpu().long()
        value = entry_value.detach().cpu().double()
        nonzero = value != 0
        if not bool(nonzero.all()):
            row, feature, value = row[nonzero], feature[nonzero], value[nonzero]
        return cls(rows, x_hat.detach().cpu().double(), row, feature, value, dense)

    @property
    def n(self) -> int:
        return len(self.rows.x)

    @functools.cached_property
    def firing(self) -> torch.Tensor:
        """Which entries are > 0 (a feature fires where it is positive)."""
        return self.value > 0

    @functools.cached_property
    def firing_entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, features, values) of the firing entries, as numpy arrays."""
        firing = self.firing
        return (self.row[firing].numpy(), self.feature[firing].numpy(),
                self.value[firing].numpy())


class FeatureMoments:
    """Per feature over the rows seen: firing counts, activation sum, sum of squares, extremes."""

    def __init__(self, d_sae: int) -> None:
        self.d_sae = d_sae
        self.rows = 0
        self.fire_count = torch.zeros(d_sae, dtype=torch.int64)  # rows with f > 0
        self.nonzero_count = torch.zeros(d_sae, dtype=torch.int64)  # rows with f != 0
        self.act_sum = torch.zeros(d_sae, dtype=torch.float64)
        self.act_sq_sum = torch.zeros(d_sae, dtype=torch.float64)
        # Extremes over the nonzero entries; the zeros of the other rows join at the end.
        self.nonzero_max = torch.full((d_sae,), -torch.inf, dtype=torch.float64)
        self.nonzero_min = torch.full((d_sae,), torch.inf, dtype=torch.float64)

    def update(self, batch: Batch) -> None:
        feats, values = batch.feature, batch.value
        self.rows += batch.n
        self.nonzero_count += torch.bincount(feats, minlength=self.d_sae)
        self.fire_count += torch.bincount(feats[batch.firing], minlength=self.d_sae)
        self.act_sum.index_add_(0, feats, values)
        self.act_sq_sum.index_add_(0, feats, values * values)
        self.nonzero_max.scatter_reduce_(0, feats, values, "amax")
        self.nonzero_min.scatter_reduce_(0, feats, values, "amin")

    @property
    def act_max(self) -> torch.Tensor:
        """Largest activation over all rows seen (0 counts where a row left the feature at 0)."""
        some_zero = self.nonzero_count < self.rows
        return torch.where(some_zero, self.nonzero_max.clamp_min(0.0), self.nonzero_max)

    @property
    def act_min(self) -> torch.Tensor:
        some_zero = self.nonzero_count < self.rows
        return torch.where(some_zero, self.nonzero_min.clamp_max(0.0), self.nonzero_min)

    @property
    def firing_rate(self) -> np.ndarray:
        return self.fire_count.numpy() / max(self.rows, 1)


class LabelCounts:
    """Per feature and label, the labelled rows where the feature fired (-1: unknown label)."""

    def __init__(self, d_sae: int) -> None:
        self.d_sae = d_sae
        self.counts = np.zeros((d_sae, 0), dtype=np.int64)  # [d_sae, labels]

    def update(self, batch: Batch) -> None:
        if batch.rows.label is None:
            return
        rows, feats, _ = batch.firing_entries
        labels = batch.rows.label[rows]
        known = labels >= 0
        feats, labels = feats[known], labels[known]
        if not len(labels):
            return
        n_labels = max(int(labels.max()) + 1, self.counts.shape[1])
        if n_labels > self.counts.shape[1]:
            grown = np.zeros((self.d_sae, n_labels), dtype=np.int64)
            grown[:, : self.counts.shape[1]] = self.counts
            self.counts = grown
        np.add.at(self.counts, (feats, labels), 1)

    def table(self) -> dict[str, np.ndarray]:
        """Nonzero (feature, label) firing counts: stats/labels.parquet's columns."""
        feats, labels = np.nonzero(self.counts)
        return {"feature": feats.astype(np.int32), "label": labels.astype(np.int64),
                "count": self.counts[feats, labels].astype(np.int64)}


class SummaryStatistics:
    """The sums behind one SAE's summary metrics: per-feature moments (dead and dense fractions)
    and reconstruction sums, in raw units."""

    def __init__(self, d_in: int, d_sae: int) -> None:
        self.d_in = d_in
        self.moments = FeatureMoments(d_sae)
        self.sq_err = 0.0  # sum over rows of ||x - x_hat||^2
        self.x_sum = torch.zeros(d_in, dtype=torch.float64)
        self.x_sq = 0.0  # sum over rows of ||x||^2
        self.l0_sum = 0.0
        self.l1_sum = 0.0
        self.l2_ratio_sum = 0.0  # sum over rows with x != 0 of ||x_hat|| / ||x||
        self.l2_ratio_rows = 0

    @property
    def rows(self) -> int:
        return self.moments.rows

    def update(self, batch: Batch) -> None:
        if batch.n == 0:
            return
        self.moments.update(batch)
        self.l0_sum += float(batch.firing.sum())
        self.l1_sum += float(batch.value.abs().sum())
        rows = batch.rows
        diff = (rows.x - batch.x_hat).flatten()
        self.sq_err += float(torch.dot(diff, diff))
        self.x_sum += rows.x_sum
        self.x_sq += rows.x_sq
        ratio = torch.linalg.vector_norm(batch.x_hat, dim=1)[rows.x_nonzero] / rows.norm[
            rows.x_nonzero]
        self.l2_ratio_sum += float(ratio.sum())
        self.l2_ratio_rows += len(ratio)

    def metrics(self, mono_score: np.ndarray | None = None) -> SummaryMetrics:
        """`mono_score`: the per-feature MonoScores (None: not computed, those fields NaN)."""
        rows = max(self.rows, 1)
        mean = self.x_sum / rows
        total_var = self.x_sq - rows * float((mean**2).sum())  # sum_t ||x_t - mean||^2
        count = self.moments.fire_count.numpy()
        rate = self.moments.firing_rate
        # MonoLoss's convention for the summary: undefined scores (dead features) count as 0.
        mono = None if mono_score is None else np.nan_to_num(mono_score, nan=0.0)
        return SummaryMetrics(
            eval_rows=self.rows,
            mse_per_element=self.sq_err / (rows * self.d_in),
            sq_err_per_row=self.sq_err / rows,
            nmse=self.sq_err / total_var if total_var > 0 else float("nan"),
            fve=1.0 - self.sq_err / total_var if total_var > 0 else float("nan"),
            l2_ratio=(self.l2_ratio_sum / self.l2_ratio_rows if self.l2_ratio_rows
                      else float("nan")),
            l0=self.l0_sum / rows,
            l1=self.l1_sum / rows,
            dead_fraction=float((count == 0).mean()),
            dense_fraction_1pct=float((rate > DENSE_THRESHOLDS[0]).mean()),
            dense_fraction_10pct=float((rate > DENSE_THRESHOLDS[1]).mean()),
            mono_score_mean=float(mono.mean()) if mono is not None else float("nan"),
            mono_score_median=float(np.median(mono)) if mono is not None else float("nan"),
            mono_score_p90=float(np.percentile(mono, 90)) if mono is not None else float("nan"),
        )


@dataclass(frozen=True)
class SummaryMetrics:
    eval_rows: int
    # Three "MSE"s are in use; each has its own name: this one is per element, ...
    mse_per_element: float  # mean over rows and dims of (x - x_hat)^2, raw activation units
    sq_err_per_row: float  # mean over rows of ||x - x_hat||^2, raw units (SAELens's `mse`)
    nmse: float  # sum ||x - x_hat||^2 / sum ||x - mean||^2
    fve: float  # fraction of variance explained = 1 - nmse
    l2_ratio: float  # mean over rows of ||x_hat|| / ||x|| (below 1: shrinkage)
    l0: float
    l1: float
    dead_fraction: float  # features that never fired on the evaluation rows
    dense_fraction_1pct: float
    dense_fraction_10pct: float
    mono_score_mean: float  # over all features, undefined (dead) ones counted as 0
    mono_score_median: float
    mono_score_p90: float
