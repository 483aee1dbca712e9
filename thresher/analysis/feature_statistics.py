"""Every statistic of one SAE over its held-out rows, for the Parquet files (`FeatureStatistics`).

Per batch it updates the shared sums (analysis/stats.py: moments, reconstruction, label
counts), each registered per-feature statistic (analysis/feature_columns.py), and the example
tables (analysis/topk_examples.py: the top-N max-activating rows per feature, one per example,
and a bottom-hash sample of its firing rows read at activation quantiles). Every selection
breaks ties by a fixed key, so one pass gives the same numbers as a brute-force recomputation
over all rows at once (tests/analysis/test_stats.py checks this).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from thresher.analysis.feature_columns import (
    FEATURE_STATISTICS,
    Column,
    FeatureStatistic,
    SAEWeights,
    Shared,
)
from thresher.analysis.stats import (
    Batch,
    LabelCounts,
    Rows,
    StatsOptions,
    SummaryMetrics,
    SummaryStatistics,
)
from thresher.analysis.topk_examples import DENSE_CUT, QuantileSampler, TopExamples


class FeatureStatistics:
    """Accumulates the statistics of one SAE over a stream of (x, f, x_hat) batches."""

    def __init__(self, d_in: int, d_sae: int, options: StatsOptions | None = None) -> None:
        self.d_in, self.d_sae = d_in, d_sae
        self.options = options or StatsOptions()
        self.sums = SummaryStatistics(d_in, d_sae)
        self.label_counts = LabelCounts(d_sae)
        self.statistics: list[FeatureStatistic] = [
            stat(d_in, d_sae, self.options) for stat in FEATURE_STATISTICS]
        self.top = TopExamples(d_sae, self.options.top_n)
        self.sampler = QuantileSampler(d_sae, self.options.reservoir)

    @property
    def rows(self) -> int:
        return self.sums.rows

    @torch.no_grad()
    def update(self, x: torch.Tensor | Rows, f: torch.Tensor, x_hat: torch.Tensor,
               example_id: np.ndarray | None = None, position: np.ndarray | None = None,
               label: np.ndarray | None = None) -> None:
        """Dense latents f [B, d_sae]. `x` is the batch's SAE input, or the `Rows` prepared once
        for several SAEs (then the ids come from it; else they default to running row
        numbers)."""
        rows = x if isinstance(x, Rows) else Rows.of(x, example_id, position, label,
                                                    first_id=self.rows)
        self.update_batch(Batch.of_dense(rows, f, x_hat))

    @torch.no_grad()
    def update_batch(self, batch: Batch) -> None:
        """A batch whose latent entries the caller made (`Batch.of_entries`)."""
        if batch.n == 0:
            return
        self.sums.update(batch)
        for stat in self.statistics:
            stat.update(batch)
        self.label_counts.update(batch)
        if self.options.top_n > 0 or self.options.reservoir > 0:
            self._update_examples(batch)

    def _update_examples(self, batch: Batch) -> None:
        rows, feats, values = batch.firing_entries
        example_id, position = batch.rows.example_id, batch.rows.position
        self.sampler.update_entries(rows, feats, values, example_id, position, batch.n)
        if self.options.top_n <= 0:
            return
        candidates = values >= self.top.floor()[feats]
        many = int(candidates.sum()) > DENSE_CUT * self.options.top_n * self.d_sae
        if many and batch.dense is not None:
            # A dense batch (early ReLU latents): reduce it to N examples per feature first.
            self.top.update_dense(batch.dense.clamp_min(0.0), example_id, position)
            return
        self.top.update(feats[candidates], values[candidates], example_id[rows[candidates]],
                        position[rows[candidates]])

    # -- results -----------------------------------------------------------------------------

    def features(self, weights: SAEWeights | None = None) -> dict[str, np.ndarray]:
        """stats/features.parquet's columns but `sae_id`; without `weights`, the columns of
        statistics that need them are NaN."""
        shared = Shared(self.sums.moments, self.label_counts.counts, weights)
        columns = {"feature": np.arange(self.d_sae, dtype=np.int32)}
        for stat in self.statistics:
            if stat.NEEDS_WEIGHTS and weights is None:
                values = {c.name: np.full(self.d_sae, np.nan) for c in stat.COLUMNS}
            else:
                values = stat.values(shared)
            declared = [c.name for c in stat.COLUMNS]
            if sorted(values) != sorted(declared):
                raise ValueError(f"statistic {type(stat).__name__} emitted {sorted(values)} "
                                 f"but declares {declared}")
            columns.update({c.name: self._column(stat, c, values[c.name])
                            for c in stat.COLUMNS})
        return columns

    def _column(self, stat: FeatureStatistic, column: Column, value: np.ndarray) -> np.ndarray:
        array = np.array(value, dtype=column.type.to_pandas_dtype())  # a copy: the sums go on
        if array.shape != (self.d_sae,):
            raise ValueError(f"statistic {type(stat).__name__} emitted `{column.name}` of shape "
                             f"{array.shape}, not one value per feature ({self.d_sae},)")
        return array

    def summary(self, features: Mapping[str, np.ndarray] | None = None) -> SummaryMetrics:
        """The summary metrics; the MonoScore ones from `features` (this SAE's `features()`,
        computed here when not given)."""
        if not self.options.monoscore:
            return self.sums.metrics()
        features = self.features() if features is None else features
        return self.sums.metrics(features["mono_score"])

    def examples(self) -> dict[str, np.ndarray]:
        """Top-N and quantile samples as columns (feature, kind, rank, quantile, ...)."""
        top = self.top.entries()
        sampled = self.sampler.quantile_samples(self.options.quantiles)
        return {name: np.concatenate([top[name], sampled[name]]) for name in top}

    def labels(self) -> dict[str, np.ndarray]:
        """Nonzero (feature, label) firing counts."""
        return self.label_counts.table()
