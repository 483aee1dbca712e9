"""The registered per-feature statistics: their declarations are FEATURES_SCHEMA, what they emit
has the declared names and types, the ones that need weights read the SAE's, and a column the
report's browser cannot show as declared is named."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest
import torch

from tests.stats_data import accumulate, synthetic
from thresher.analysis.feature_columns import (
    FEATURE_STATISTICS,
    Column,
    FeatureStatistic,
    SAEWeights,
    Shared,
    feature_columns,
    feature_statistic,
)
from thresher.analysis.feature_statistics import FeatureStatistics
from thresher.analysis.parquet import FEATURES_SCHEMA, table_from_columns
from thresher.analysis.stats import StatsOptions


class SecondFireCount(FeatureStatistic):
    """Declares a column another statistic already has (never registered)."""

    COLUMNS = (Column("fire_count", pa.int64(), "again"),)


class Misnamed(FeatureStatistic):
    """Emits a column under another name than it declares (never registered)."""

    COLUMNS = (Column("alpha", pa.float64(), "declared"),)

    def values(self, shared: Shared) -> dict[str, np.ndarray]:
        return {"beta": np.zeros(self.d_sae)}


def weights_of(d_in: int, d_sae: int, seed: int = 0) -> SAEWeights:
    rng = np.random.default_rng(seed)
    w_dec = rng.normal(size=(d_sae, d_in))
    return SAEWeights(torch.from_numpy(rng.normal(size=(d_in, d_sae))), torch.from_numpy(w_dec),
                      np.linalg.norm(w_dec, axis=1) * 2.5)


def test_features_schema_is_the_registered_columns() -> None:
    columns = feature_columns()
    assert FEATURES_SCHEMA.names == [c.name for c in columns]
    assert [f.type for f in FEATURES_SCHEMA] == [c.type for c in columns]
    assert FEATURES_SCHEMA.names[:2] == ["sae_id", "feature"]
    assert len(set(FEATURES_SCHEMA.names)) == len(FEATURES_SCHEMA.names)


def test_a_column_name_is_registered_once() -> None:
    before = list(FEATURE_STATISTICS)
    with pytest.raises(ValueError, match=r"SecondFireCount declares \['fire_count'\], already"):
        feature_statistic(SecondFireCount)
    assert before == FEATURE_STATISTICS


def test_emitted_columns_have_the_declared_types_and_make_a_table() -> None:
    data = synthetic(rows=240)
    stats = accumulate(data, 64, StatsOptions(top_n=3, reservoir=4, quantiles=2))
    d_in, d_sae = data["x"].shape[1], data["f"].shape[1]
    columns = stats.features(weights_of(d_in, d_sae))
    for column in feature_columns()[1:]:
        assert columns[column.name].dtype == column.type.to_pandas_dtype(), column.name
        assert columns[column.name].shape == (d_sae,), column.name
    columns["sae_id"] = np.array(["s"] * d_sae, dtype=object)
    assert table_from_columns(columns, FEATURES_SCHEMA).num_rows == d_sae


def test_weight_statistics_read_the_weights_and_are_nan_without() -> None:
    data = synthetic(rows=120)
    stats = accumulate(data, 50, StatsOptions())
    d_in, d_sae = data["x"].shape[1], data["f"].shape[1]
    weights = weights_of(d_in, d_sae, seed=4)
    with_weights, without = stats.features(weights), stats.features()
    needs = {c.name for stat in FEATURE_STATISTICS if stat.NEEDS_WEIGHTS for c in stat.COLUMNS}
    assert needs == {"decoder_norm", "max_decoder_cos"}
    for name in needs:
        assert np.isnan(without[name]).all(), name
    np.testing.assert_allclose(with_weights["decoder_norm"], weights.decoder_norm)
    unit = weights.w_dec.numpy() / np.linalg.norm(weights.w_dec.numpy(), axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_allclose(with_weights["max_decoder_cos"], sims.max(1), rtol=1e-12)
    for name in set(with_weights) - needs:
        np.testing.assert_array_equal(with_weights[name], without[name], err_msg=name)


def test_a_statistic_that_emits_other_columns_than_it_declares_is_named() -> None:
    stats = FeatureStatistics(4, 3)
    stats.statistics.append(Misnamed(4, 3, stats.options))
    with pytest.raises(ValueError, match=r"Misnamed emitted \['beta'\] but declares \['alpha'\]"):
        stats.features()


@pytest.mark.parametrize("batch", [240, 61, 7])
def test_activation_entropy_equals_its_definition(batch: int) -> None:
    data = synthetic(rows=240)
    f = data["f"]
    f[:, 7] = 0.0
    f[11, 7] = 1.5  # fires on one row only: entropy 0
    f[:, 9] = np.where(np.arange(240) % 4 == 0, 0.7, 0.0)  # 60 equal activations: ln 60
    stats = accumulate(data, batch, StatsOptions(top_n=0, reservoir=0, monoscore=False))
    reference = np.full(f.shape[1], np.nan)
    for j in range(f.shape[1]):
        a = f[f[:, j] > 0, j]
        if len(a):
            p = a / a.sum()
            reference[j] = -(p * np.log(p)).sum()
    entropy = stats.features()["activation_entropy"]
    np.testing.assert_allclose(entropy, reference, rtol=1e-9, atol=1e-12)
    assert np.isnan(entropy[3])  # the dead feature
    assert entropy[7] == pytest.approx(0.0, abs=1e-12)
    assert entropy[9] == pytest.approx(np.log(60), rel=1e-12)


@pytest.mark.parametrize(("settings", "problem"), [
    ({"filter": "min"}, "column sparkle: filter='min' needs a number, not string"),
    ({"filter": "hide"}, "column sparkle: filter='hide' needs a bool, not string"),
    ({"display": "label_name"}, "display='label_name' needs an integer, not string"),
    ({"browse": "sidebar"}, "browse='sidebar' is not one of ('table', 'feature', 'none')"),
])
def test_a_column_the_browser_cannot_show_as_declared_is_named(settings: dict[str, str],
                                                               problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        Column("sparkle", pa.string(), "how it sparkles", **settings)  # type: ignore[arg-type]
