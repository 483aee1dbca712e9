"""The columns of stats/features.parquet: one class per statistic, registered in column order.

A statistic declares its columns (name, Arrow type, the meaning docs/formats.md shows, and how
the report's feature browser shows them: `Column`), may accumulate over an SAE's held-out batches
(`update`, given each `Batch` of analysis/stats.py), and emits one array per column (`values`).
When it emits it can read what every statistic shares (`Shared`: the firing moments, the label
counts) and, if it declares NEEDS_WEIGHTS, the SAE's frozen weights. FEATURES_SCHEMA
(analysis/parquet.py) is `sae_id`, `feature` and the registered columns in this order,
tests/analysis/test_formats_doc.py checks docs/formats.md's table against the declarations, and the
feature browser (analysis/report/browser.py) lists them as they ask. Adding a statistic is a
class here under `@feature_statistic` and its line in docs/formats.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeVar, get_args

import numpy as np
import pyarrow as pa
import torch

from thresher.analysis.monoscore import MonoScoreAccumulator
from thresher.analysis.stats import DENSE_THRESHOLDS, Batch, FeatureMoments, StatsOptions

Browse = Literal["table", "feature", "none"]
Filter = Literal["none", "min", "range", "hide"]
Display = Literal["value", "label_name"]


@dataclass(frozen=True)
class Column:
    """One column of stats/features.parquet and how the report's feature browser shows it.

    browse: "table" (a column of the feature table, and in the feature view), "feature" (the
    feature view only) or "none". filter: "min" (a lower bound), "range" (lower and upper
    bounds), "hide" (a ticked box that hides the rows where this flag is true) or "none".
    display: "value" (numbers to 3 significant digits, flags as "yes") or "label_name" (a label
    index shown by the stream's name for it, blank where −1). The browser's header is `label`,
    the name with spaces where empty; its tooltip is the meaning.
    """

    name: str
    type: pa.DataType
    meaning: str  # docs/formats.md's cell, verbatim
    label: str = ""
    browse: Browse = "table"
    filter: Filter = "none"
    display: Display = "value"

    def __post_init__(self) -> None:
        numeric = pa.types.is_integer(self.type) or pa.types.is_floating(self.type)
        problems = [f"{field}={value!r} is not one of {get_args(choices)}"
                    for field, value, choices in (("browse", self.browse, Browse),
                                                  ("filter", self.filter, Filter),
                                                  ("display", self.display, Display))
                    if value not in get_args(choices)]
        if self.filter in ("min", "range") and not numeric:
            problems.append(f"filter={self.filter!r} needs a number, not {self.type}")
        if self.filter == "hide" and not pa.types.is_boolean(self.type):
            problems.append(f"filter='hide' needs a bool, not {self.type}")
        if self.display == "label_name" and not pa.types.is_integer(self.type):
            problems.append(f"display='label_name' needs an integer, not {self.type}")
        if problems:
            raise ValueError(f"column {self.name}: {'; '.join(problems)} (Column's docstring "
                             "in thresher/analysis/feature_columns.py lists the choices)")

    @property
    def header(self) -> str:
        """The feature browser's name for it."""
        return self.label or self.name.replace("_", " ")


@dataclass(frozen=True)
class SAEWeights:
    """An SAE's frozen weights, for the statistics of its dictionary."""

    w_enc: torch.Tensor  # [d_in, d_sae], any units (directions only)
    w_dec: torch.Tensor  # [d_sae, d_in], any units (directions only)
    decoder_norm: np.ndarray  # [d_sae] norms of the decoder rows in training units (c·x)


@dataclass(frozen=True)
class Shared:
    """What every statistic may read when it emits, computed once per SAE."""

    moments: FeatureMoments
    label_counts: np.ndarray  # [d_sae, labels] labelled firing rows per label
    weights: SAEWeights | None  # only for statistics that declare NEEDS_WEIGHTS


class FeatureStatistic(ABC):
    """One or more per-feature columns of one SAE."""

    COLUMNS: ClassVar[tuple[Column, ...]]
    NEEDS_WEIGHTS: ClassVar[bool] = False  # emitted as NaN where no weights are given

    def __init__(self, d_in: int, d_sae: int, options: StatsOptions) -> None:
        self.d_in, self.d_sae, self.options = d_in, d_sae, options

    def update(self, batch: Batch) -> None:
        """Accumulate one held-out batch (nothing, for a statistic of the shared sums alone)."""
        del batch  # a statistic read from the shared sums keeps no state of its own

    @abstractmethod
    def values(self, shared: Shared) -> dict[str, np.ndarray]:
        """One [d_sae] array per declared column."""


StatisticClass = TypeVar("StatisticClass", bound=type[FeatureStatistic])
KEY_COLUMNS = (Column("sae_id", pa.string(), "", browse="none"),
               Column("feature", pa.int32(), "latent index"))
FEATURE_STATISTICS: list[type[FeatureStatistic]] = []


def feature_columns() -> tuple[Column, ...]:
    """Every column of stats/features.parquet, in order."""
    return (*KEY_COLUMNS, *(c for stat in FEATURE_STATISTICS for c in stat.COLUMNS))


def feature_statistic(cls: StatisticClass) -> StatisticClass:
    """Register a statistic: its columns follow those registered before it."""
    taken = {c.name for c in feature_columns()}
    clash = [c.name for c in cls.COLUMNS if c.name in taken]
    if clash:
        raise ValueError(f"statistic {cls.__name__} declares {clash}, already columns of "
                         "stats/features.parquet: give its columns other names")
    FEATURE_STATISTICS.append(cls)
    return cls


@feature_statistic
class Firing(FeatureStatistic):
    COLUMNS = (
        Column("fire_count", pa.int64(), "held-out rows where the feature is > 0",
               label="fires", browse="feature"),
        Column("firing_rate", pa.float64(), "fire_count / eval_rows", label="density",
               filter="range"),
        Column("log10_density", pa.float64(),
               "log10(firing_rate); −inf for a feature that never fired", browse="feature"),
    )

    def values(self, shared: Shared) -> dict[str, np.ndarray]:
        count = shared.moments.fire_count.numpy()
        rate = shared.moments.firing_rate
        with np.errstate(divide="ignore"):
            log10_density = np.where(count > 0, np.log10(rate), -np.inf)
        return {"fire_count": count, "firing_rate": rate, "log10_density": log10_density}


@feature_statistic
class Activation(FeatureStatistic):
    COLUMNS = (
        Column("mean_act", pa.float64(), "mean activation over all rows", label="mean act",
               browse="feature"),
        Column("mean_act_when_active", pa.float64(),
               "mean over the rows where it fired (0 if never)", label="mean act (firing)"),
        Column("std_act", pa.float64(), "standard deviation of the activation over all rows",
               label="std act", browse="feature"),
        Column("max_act", pa.float64(), "largest activation", label="max act"),
    )

    def values(self, shared: Shared) -> dict[str, np.ndarray]:
        moments = shared.moments
        rows = max(moments.rows, 1)
        count = moments.fire_count.numpy()
        act_sum, act_sq = moments.act_sum.numpy(), moments.act_sq_sum.numpy()
        mean = act_sum / rows
        mean_active = np.where(count > 0, act_sum / np.maximum(count, 1), 0.0)
        return {"mean_act": mean, "mean_act_when_active": mean_active,
                "std_act": np.sqrt(np.maximum(act_sq / rows - mean**2, 0.0)),
                "max_act": np.maximum(moments.act_max.numpy(), 0.0)}


@feature_statistic
class DecoderNorm(FeatureStatistic):
    COLUMNS = (Column("decoder_norm", pa.float64(),
                      "norm of the decoder row in the training space (inputs c·x)",
                      browse="feature"),)
    NEEDS_WEIGHTS = True

    def values(self, shared: Shared) -> dict[str, np.ndarray]:
        assert shared.weights is not None
        return {"decoder_norm": np.asarray(shared.weights.decoder_norm)}


@feature_statistic
class MaxDecoderCosine(FeatureStatistic):
    COLUMNS = (Column("max_decoder_cos", pa.float64(),
                      "largest cosine between this decoder row and another of the same SAE",
                      label="max dec cos"),)
    NEEDS_WEIGHTS = True

    def values(self, shared: Shared) -> dict[str, np.ndarray]:
        assert shared.weights is not None
        return {"max_decoder_cos": max_decoder_cosine(shared.weights.w_dec)}


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


@feature_statistic
class MonoScore(FeatureStatistic):
    """Exact MonoScore in one pass (analysis/monoscore.py); NaN everywhere when turned off."""

    COLUMNS = (Column(
        "mono_score", pa.float64(),
        "MonoScore (Pach et al.) with the SAE input x/‖x‖ as embedding, exact, one pass "
        "(thresher/analysis/monoscore.py; an all-zero input row is similar to no row, as in the "
        "pairwise definition); NaN where undefined (a feature that never varied)",
        label="MonoScore", filter="min"),)

    def __init__(self, d_in: int, d_sae: int, options: StatsOptions) -> None:
        super().__init__(d_in, d_sae, options)
        self.sums = MonoScoreAccumulator(d_in, d_sae) if options.monoscore else None

    def update(self, batch: Batch) -> None:
        if self.sums is not None:
            self.sums.update(batch.rows.unit, batch.row, batch.feature, batch.value)

    def values(self, shared: Shared) -> dict[str, np.ndarray]:
        if self.sums is None:
            return {"mono_score": np.full(self.d_sae, np.nan)}
        m = shared.moments
        return {"mono_score": self.sums.scores(m.rows, m.act_sum.numpy(), m.act_sq_sum.numpy(),
                                               m.act_min.numpy(), m.act_max.numpy())}


@feature_statistic
class DeadOrDense(FeatureStatistic):
    COLUMNS = (Column("is_dead", pa.bool_(), "never fired", label="dead", filter="hide"),
               Column("is_dense", pa.bool_(), "fired on more than 10% of rows", label="dense",
                      browse="feature"))

    def values(self, shared: Shared) -> dict[str, np.ndarray]:
        return {"is_dead": shared.moments.fire_count.numpy() == 0,
                "is_dense": shared.moments.firing_rate > DENSE_THRESHOLDS[1]}


@feature_statistic
class LabelPurity(FeatureStatistic):
    COLUMNS = (
        Column("top_label", pa.int64(), "most frequent label among its labelled firing rows; "
               "−1 if none", display="label_name"),
        Column("label_purity", pa.float64(),
               "share of its labelled firing rows with `top_label`; NaN if none. Counted over "
               "rows: with one row per image (hook `embedding`, tokens `cls`) this is "
               "MonoLoss's purity (share of a latent's activating images in its dominant "
               "class); with patch rows an image counts once per firing patch", filter="min"),
    )

    def values(self, shared: Shared) -> dict[str, np.ndarray]:
        counts = shared.label_counts
        if counts.shape[1] == 0:
            return {"top_label": np.full(self.d_sae, -1),
                    "label_purity": np.full(self.d_sae, np.nan)}
        labelled = counts.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            purity = counts.max(1) / labelled
        return {"top_label": np.where(labelled > 0, counts.argmax(1), -1),
                "label_purity": np.where(labelled > 0, purity, np.nan)}


@feature_statistic
class ActivationEntropy(FeatureStatistic):
    """How spread a feature's activation mass is over its firing rows: with S = Σ f and
    T = Σ f ln f over them, H = −Σ (f/S) ln(f/S) = ln S − T/S, two sums per feature."""

    COLUMNS = (Column(
        "activation_entropy", pa.float64(),
        "Shannon entropy (nats) of its activation mass over the held-out rows where it fired, "
        "p = f / Σf: 0 when one row carries it all, ln(fire_count) when every firing row "
        "carries the same (exp of it: the effective number of rows); NaN if it never fired"),)

    def __init__(self, d_in: int, d_sae: int, options: StatsOptions) -> None:
        super().__init__(d_in, d_sae, options)
        self.mass = torch.zeros(d_sae, dtype=torch.float64)  # S
        self.mass_log = torch.zeros(d_sae, dtype=torch.float64)  # T

    def update(self, batch: Batch) -> None:
        firing = batch.firing
        feats, values = batch.feature[firing], batch.value[firing]
        self.mass.index_add_(0, feats, values)
        self.mass_log.index_add_(0, feats, values * values.log())

    def values(self, shared: Shared) -> dict[str, np.ndarray]:
        mass, mass_log = self.mass.numpy(), self.mass_log.numpy()
        fired = mass > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            entropy = np.log(mass) - mass_log / mass
        return {"activation_entropy": np.where(fired, np.maximum(entropy, 0.0), np.nan)}
