"""Streaming per-feature and per-SAE statistics, computed with frozen weights.

`SAEStats` accumulates, batch by batch, everything the Parquet files need:

- per feature: firing counts, activation sum, sum of squares, min and max;
- the top-N max-activating rows per feature (one entry per example) and a bottom-hash sample
  of its firing rows from which samples at activation quantiles are drawn (`examples`);
- MonoScore accumulators (`monoscore.MonoScoreAccumulator`) with the SAE input as embedding;
- label counts per feature when the rows carry labels (purity);
- the sums behind the reconstruction metrics (MSE, NMSE, FVE, L2 ratio, L0, L1).

Sums are kept in float64 and every selection breaks ties by a fixed key, so the result does not
depend on how the rows were batched: one pass gives the same numbers as a brute-force
recomputation over all rows at once (tests/test_stats.py checks this).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from thresher.analysis.monoscore import MonoScoreAccumulator
from thresher.analysis.topk_examples import QuantileSampler, TopExamples

# A feature is dense when it fires on more than this share of rows (SAEBench's thresholds).
DENSE_THRESHOLDS = (0.01, 0.1)


@dataclass(frozen=True)
class StatsOptions:
    top_n: int = 16  # max-activating examples kept per feature
    reservoir: int = 64  # firing rows sampled per feature (bottom-hash) for quantile samples
    quantiles: int = 8  # samples drawn from the reservoir at evenly spaced activation quantiles
    monoscore: bool = True


class SAEStats:
    """Accumulates statistics of one SAE over a stream of (x, f, x_hat) batches."""

    def __init__(self, d_in: int, d_sae: int, options: StatsOptions | None = None) -> None:
        self.d_in, self.d_sae = d_in, d_sae
        self.options = options or StatsOptions()
        self.rows = 0
        self.fire_count = torch.zeros(d_sae, dtype=torch.int64)
        self.act_sum = torch.zeros(d_sae, dtype=torch.float64)
        self.act_sq_sum = torch.zeros(d_sae, dtype=torch.float64)
        self.act_max = torch.full((d_sae,), -torch.inf, dtype=torch.float64)
        self.act_min = torch.full((d_sae,), torch.inf, dtype=torch.float64)
        self.sq_err = 0.0  # sum over rows of ||x - x_hat||^2
        self.x_sum = torch.zeros(d_in, dtype=torch.float64)
        self.x_sq = 0.0  # sum over rows of ||x||^2
        self.l0_sum = 0.0
        self.l1_sum = 0.0
        self.l2_ratio_sum = 0.0  # sum over rows with x != 0 of ||x_hat|| / ||x||
        self.l2_ratio_rows = 0
        self.top = TopExamples(d_sae, self.options.top_n)
        self.sampler = QuantileSampler(d_sae, self.options.reservoir)
        self.mono = MonoScoreAccumulator(d_in, d_sae) if self.options.monoscore else None
        self.label_counts = np.zeros((d_sae, 0), dtype=np.int64)  # [d_sae, labels] firing rows

    @torch.no_grad()
    def update(self, x: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor,
               example_id: np.ndarray | None = None, position: np.ndarray | None = None,
               label: np.ndarray | None = None) -> None:
        x, f, x_hat = x.double().cpu(), f.double().cpu(), x_hat.double().cpu()
        n = len(x)
        if n == 0:
            return
        if example_id is None:
            example_id = np.arange(self.rows, self.rows + n, dtype=np.int64)
        if position is None:
            position = np.zeros(n, dtype=np.int32)
        active = f > 0
        self.rows += n
        self.fire_count += active.sum(0)
        self.act_sum += f.sum(0)
        self.act_sq_sum += (f * f).sum(0)
        self.act_max = torch.maximum(self.act_max, f.max(0).values)
        self.act_min = torch.minimum(self.act_min, f.min(0).values)
        self.sq_err += float(((x - x_hat) ** 2).sum())
        self.x_sum += x.sum(0)
        x_norm_sq = (x**2).sum(1)
        self.x_sq += float(x_norm_sq.sum())
        self.l0_sum += float(active.sum())
        self.l1_sum += float(f.abs().sum())
        x_norm = x_norm_sq.sqrt()
        nonzero = x_norm > 0
        self.l2_ratio_sum += float((x_hat.norm(dim=1)[nonzero] / x_norm[nonzero]).sum())
        self.l2_ratio_rows += int(nonzero.sum())

        rows, feats = torch.nonzero(active, as_tuple=True)
        values = f[rows, feats].numpy()
        rows_np, feats_np = rows.numpy(), feats.numpy()
        self.top.update_dense(f, np.asarray(example_id, dtype=np.int64),
                              np.asarray(position, dtype=np.int32))
        self.sampler.update_entries(rows_np, feats_np, values,
                                    np.asarray(example_id, dtype=np.int64),
                                    np.asarray(position, dtype=np.int32), n)
        if self.mono is not None:
            self.mono.update(x, rows, feats, torch.from_numpy(values))
        if label is not None:
            self._count_labels(feats_np, np.asarray(label, dtype=np.int64)[rows_np])

    def _count_labels(self, feats: np.ndarray, labels: np.ndarray) -> None:
        known = labels >= 0  # -1: unknown
        feats, labels = feats[known], labels[known]
        if not len(labels):
            return
        n_labels = max(int(labels.max()) + 1, self.label_counts.shape[1])
        if n_labels > self.label_counts.shape[1]:
            grown = np.zeros((self.d_sae, n_labels), dtype=np.int64)
            grown[:, : self.label_counts.shape[1]] = self.label_counts
            self.label_counts = grown
        np.add.at(self.label_counts, (feats, labels), 1)

    # -- results -----------------------------------------------------------------------------

    def mono_scores(self) -> np.ndarray:
        """MonoScore per feature (NaN where undefined: a feature that never varied)."""
        if self.mono is None:
            return np.full(self.d_sae, np.nan)
        return self.mono.scores(self.rows, self.act_sum.numpy(), self.act_sq_sum.numpy(),
                                self.act_min.numpy(), self.act_max.numpy())

    def features(self) -> dict[str, np.ndarray]:
        rows = max(self.rows, 1)
        count = self.fire_count.numpy()
        rate = count / rows
        act_sum, act_sq = self.act_sum.numpy(), self.act_sq_sum.numpy()
        mean = act_sum / rows
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_active = np.where(count > 0, act_sum / np.maximum(count, 1), 0.0)
            log10_density = np.where(count > 0, np.log10(rate), -np.inf)
        std = np.sqrt(np.maximum(act_sq / rows - mean**2, 0.0))
        labelled = self.label_counts.sum(1)
        has_labels = self.label_counts.shape[1] > 0
        top_label = np.where(labelled > 0, self.label_counts.argmax(1), -1) if has_labels \
            else np.full(self.d_sae, -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            purity = (self.label_counts.max(1) / labelled if has_labels
                      else np.full(self.d_sae, np.nan))
        purity = np.where(labelled > 0, purity, np.nan)
        return {
            "feature": np.arange(self.d_sae, dtype=np.int32),
            "fire_count": count.astype(np.int64),
            "firing_rate": rate.astype(np.float64),
            "log10_density": log10_density.astype(np.float64),
            "mean_act": mean.astype(np.float64),
            "mean_act_when_active": mean_active.astype(np.float64),
            "std_act": std.astype(np.float64),
            "max_act": np.maximum(self.act_max.numpy(), 0.0).astype(np.float64),
            "mono_score": self.mono_scores().astype(np.float64),
            "is_dead": count == 0,
            "is_dense": rate > DENSE_THRESHOLDS[1],
            "top_label": top_label.astype(np.int64),
            "label_purity": purity.astype(np.float64),
        }

    def examples(self) -> dict[str, np.ndarray]:
        """Top-N and quantile samples as columns (feature, kind, rank, quantile, ...)."""
        top = self.top.entries()
        sampled = self.sampler.quantile_samples(self.options.quantiles)
        return {name: np.concatenate([top[name], sampled[name]]) for name in top}

    def labels(self) -> dict[str, np.ndarray]:
        """Nonzero (feature, label) firing counts."""
        feats, labels = np.nonzero(self.label_counts)
        return {"feature": feats.astype(np.int32), "label": labels.astype(np.int64),
                "count": self.label_counts[feats, labels].astype(np.int64)}

    def summary(self) -> SummaryMetrics:
        rows = max(self.rows, 1)
        mean = self.x_sum / rows
        total_var = self.x_sq - rows * float((mean**2).sum())  # sum_t ||x_t - mean||^2
        count = self.fire_count.numpy()
        rate = count / rows
        # MonoLoss's convention for the summary: undefined scores (dead features) count as 0.
        mono = np.nan_to_num(self.mono_scores(), nan=0.0)
        return SummaryMetrics(
            eval_rows=self.rows,
            mse=self.sq_err / (rows * self.d_in),
            nmse=self.sq_err / total_var if total_var > 0 else float("nan"),
            fve=1.0 - self.sq_err / total_var if total_var > 0 else float("nan"),
            l2_ratio=(self.l2_ratio_sum / self.l2_ratio_rows if self.l2_ratio_rows
                      else float("nan")),
            l0=self.l0_sum / rows,
            l1=self.l1_sum / rows,
            dead_fraction=float((count == 0).mean()),
            dense_fraction_1pct=float((rate > DENSE_THRESHOLDS[0]).mean()),
            dense_fraction_10pct=float((rate > DENSE_THRESHOLDS[1]).mean()),
            mono_score_mean=float(mono.mean()) if self.mono is not None else float("nan"),
            mono_score_median=float(np.median(mono)) if self.mono is not None else float("nan"),
            mono_score_p90=(float(np.percentile(mono, 90)) if self.mono is not None
                            else float("nan")),
        )


@dataclass(frozen=True)
class SummaryMetrics:
    eval_rows: int
    mse: float  # mean over rows and dims of (x - x_hat)^2, raw activation units
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


def max_decoder_cosine(w_dec: torch.Tensor, block: int = 2048) -> np.ndarray:
    """Each decoder row's largest cosine with another row of the same SAE, [d_sae]."""
    w = w_dec.detach().double().cpu()
    unit = w / w.norm(dim=1, keepdim=True).clamp_min(1e-30)
    out = torch.empty(len(w), dtype=torch.float64)
    for start in range(0, len(w), block):
        sims = unit[start:start + block] @ unit.T
        idx = torch.arange(start, min(start + block, len(w)))
        sims[idx - start, idx] = -torch.inf
        out[start:start + block] = sims.max(1).values if len(w) > 1 else torch.nan
    return out.numpy()
