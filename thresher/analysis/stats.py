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

import functools
from dataclasses import dataclass

import numpy as np
import torch

from thresher.analysis.monoscore import MonoScoreAccumulator, unit_rows
from thresher.analysis.topk_examples import DENSE_CUT, QuantileSampler, TopExamples

# A feature is dense when it fires on more than this share of rows (SAEBench's thresholds).
DENSE_THRESHOLDS = (0.01, 0.1)


@dataclass(frozen=True)
class StatsOptions:
    top_n: int = 16  # max-activating examples kept per feature
    reservoir: int = 64  # firing rows sampled per feature (bottom-hash) for quantile samples
    quantiles: int = 8  # samples drawn from the reservoir at evenly spaced activation quantiles
    monoscore: bool = True


# What training curves need (rates, moments, reconstruction): no examples, no MonoScore sums.
CURVE_OPTIONS = StatsOptions(top_n=0, reservoir=0, quantiles=0, monoscore=False)


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


class SAEStats:
    """Accumulates statistics of one SAE over a stream of (x, f, x_hat) batches.

    Latents are handled as their nonzero entries (row, feature, value): every per-feature sum,
    extreme and table is updated from those alone, so a TopK batch costs O(B·k), not
    O(B·d_sae). `update` takes dense latents, `update_sparse` the entries themselves (what a
    TopK step already has).
    """

    def __init__(self, d_in: int, d_sae: int, options: StatsOptions | None = None) -> None:
        self.d_in, self.d_sae = d_in, d_sae
        self.options = options or StatsOptions()
        self.rows = 0
        self.fire_count = torch.zeros(d_sae, dtype=torch.int64)  # rows with f > 0
        self.nonzero_count = torch.zeros(d_sae, dtype=torch.int64)  # rows with f != 0
        self.act_sum = torch.zeros(d_sae, dtype=torch.float64)
        self.act_sq_sum = torch.zeros(d_sae, dtype=torch.float64)
        # Extremes over the nonzero entries; the zeros of the other rows join at the end.
        self.nonzero_max = torch.full((d_sae,), -torch.inf, dtype=torch.float64)
        self.nonzero_min = torch.full((d_sae,), torch.inf, dtype=torch.float64)
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

    @property
    def act_max(self) -> torch.Tensor:
        """Largest activation over all rows seen (0 counts where a row left the feature at 0)."""
        some_zero = self.nonzero_count < self.rows
        return torch.where(some_zero, self.nonzero_max.clamp_min(0.0), self.nonzero_max)

    @property
    def act_min(self) -> torch.Tensor:
        some_zero = self.nonzero_count < self.rows
        return torch.where(some_zero, self.nonzero_min.clamp_max(0.0), self.nonzero_min)

    @torch.no_grad()
    def update(self, x: torch.Tensor | Rows, f: torch.Tensor, x_hat: torch.Tensor,
               example_id: np.ndarray | None = None, position: np.ndarray | None = None,
               label: np.ndarray | None = None) -> None:
        """Dense latents f [B, d_sae] (on any device: entries are found there). `x` is the
        batch's SAE input, or the `Rows` prepared once for several SAEs (then the ids come
        from it)."""
        entry_row, entry_feature = torch.nonzero(f, as_tuple=True)  # row-major
        self.update_sparse(x, x_hat, entry_row, entry_feature, f[entry_row, entry_feature],
                           example_id, position, label, dense_f=f)

    @torch.no_grad()
    def update_sparse(self, x: torch.Tensor | Rows, x_hat: torch.Tensor,
                      entry_row: torch.Tensor, entry_feature: torch.Tensor,
                      entry_value: torch.Tensor, example_id: np.ndarray | None = None,
                      position: np.ndarray | None = None, label: np.ndarray | None = None,
                      dense_f: torch.Tensor | None = None) -> None:
        """A batch given by its latents' entries: f[entry_row[i], entry_feature[i]] =
        entry_value[i], every other latent 0; each (row, feature) at most once, in any order.
        Entries may hold zeros (a TopK slot whose value the ReLU cut)."""
        batch = x if isinstance(x, Rows) else Rows.of(x, example_id, position, label,
                                                     first_id=self.rows)
        n = len(batch.x)
        if n == 0:
            return
        x_hat = x_hat.detach().cpu().double()
        rows, feats = entry_row.detach().cpu().long(), entry_feature.detach().cpu().long()
        values = entry_value.detach().cpu().double()
        nonzero = values != 0
        if not bool(nonzero.all()):
            rows, feats, values = rows[nonzero], feats[nonzero], values[nonzero]
        self.rows += n
        firing = values > 0
        d = self.d_sae
        self.nonzero_count += torch.bincount(feats, minlength=d)
        self.fire_count += torch.bincount(feats[firing], minlength=d)
        self.act_sum.index_add_(0, feats, values)
        self.act_sq_sum.index_add_(0, feats, values * values)
        self.nonzero_max.scatter_reduce_(0, feats, values, "amax")
        self.nonzero_min.scatter_reduce_(0, feats, values, "amin")
        self.l0_sum += float(firing.sum())
        self.l1_sum += float(values.abs().sum())
        diff = (batch.x - x_hat).flatten()
        self.sq_err += float(torch.dot(diff, diff))
        self.x_sum += batch.x_sum
        self.x_sq += batch.x_sq
        ratio = torch.linalg.vector_norm(x_hat, dim=1)[batch.x_nonzero] / batch.norm[
            batch.x_nonzero]
        self.l2_ratio_sum += float(ratio.sum())
        self.l2_ratio_rows += len(ratio)
        if self.mono is not None:
            self.mono.update(batch.unit, rows, feats, values)
        if not (self.options.top_n > 0 or self.options.reservoir > 0
                or batch.label is not None):
            return
        rows_f, feats_f = rows[firing].numpy(), feats[firing].numpy()
        values_f = values[firing].numpy()
        self._update_top(rows_f, feats_f, values_f, batch.example_id, batch.position, dense_f)
        self.sampler.update_entries(rows_f, feats_f, values_f, batch.example_id,
                                    batch.position, n)
        if batch.label is not None:
            self._count_labels(feats_f, batch.label[rows_f])

    def _update_top(self, rows: np.ndarray, feats: np.ndarray, values: np.ndarray,
                    example_id: np.ndarray, position: np.ndarray,
                    dense_f: torch.Tensor | None) -> None:
        if self.options.top_n <= 0:
            return
        candidates = values >= self.top.floor()[feats]
        many = int(candidates.sum()) > DENSE_CUT * self.options.top_n * self.d_sae
        if many and dense_f is not None:
            # A dense batch (early ReLU latents): reduce it to N examples per feature first.
            self.top.update_dense(dense_f.clamp_min(0.0), example_id, position)
            return
        self.top.update(feats[candidates], values[candidates], example_id[rows[candidates]],
                        position[rows[candidates]])

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
            mono_score_mean=float(mono.mean()) if self.mono is not None else float("nan"),
            mono_score_median=float(np.median(mono)) if self.mono is not None else float("nan"),
            mono_score_p90=(float(np.percentile(mono, 90)) if self.mono is not None
                            else float("nan")),
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
