"""Streaming statistics vs brute-force recomputation over all rows at once (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.stats_data import accumulate, assert_equal_to_brute_force, brute_force, synthetic
from thresher.analysis.feature_columns import max_decoder_cosine
from thresher.analysis.feature_statistics import FeatureStatistics
from thresher.analysis.stats import Batch, Rows, StatsOptions


@pytest.mark.parametrize("batch", [600, 97, 13])
def test_streaming_statistics_equal_brute_force(batch: int) -> None:
    data = synthetic()
    options = StatsOptions(top_n=5, reservoir=9, quantiles=4)
    stats = accumulate(data, batch, options)
    ref = brute_force(data, options)
    assert np.isnan(ref["mono_score"][3])  # the dead feature
    assert_equal_to_brute_force(stats.features(), stats.summary().__dict__, stats.examples(),
                                ref)


def test_sparse_entries_in_any_order_equal_dense_latents() -> None:
    """A batch given as a TopK-like entry list (rows repeated, features unsorted, zero values
    among them) gives exactly what update gives on the dense matrix."""
    data = synthetic(rows=300, d_sae=40)
    options = StatsOptions(top_n=4, reservoir=6, quantiles=3)
    dense = accumulate(data, 64, options)
    sparse = FeatureStatistics(12, 40, options)
    rng = np.random.default_rng(3)
    for s in range(0, 300, 64):
        f = torch.from_numpy(data["f"][s:s + 64])
        rows, feats = torch.nonzero(f >= 0, as_tuple=True)  # every entry, zeros included
        keep = torch.from_numpy(rng.random(len(rows)) < 0.5) | (f[rows, feats] > 0)
        order = torch.from_numpy(rng.permutation(int(keep.sum())))
        rows, feats = rows[keep][order], feats[keep][order]
        inputs = Rows.of(torch.from_numpy(data["x"][s:s + 64]), data["example_id"][s:s + 64],
                         data["position"][s:s + 64], data["label"][s:s + 64])
        sparse.update_batch(Batch.of_entries(inputs, torch.from_numpy(data["x_hat"][s:s + 64]),
                                             rows, feats, f[rows, feats]))
    for name, column in dense.features().items():  # sums in another order: float rounding
        if column.dtype.kind == "f":
            np.testing.assert_allclose(sparse.features()[name], column, rtol=1e-12,
                                       atol=1e-15, err_msg=name)
        else:
            np.testing.assert_array_equal(sparse.features()[name], column, err_msg=name)
    for name in dense.summary().__dict__:
        assert getattr(sparse.summary(), name) == pytest.approx(
            getattr(dense.summary(), name), rel=1e-12), name
    for name, column in dense.examples().items():
        np.testing.assert_array_equal(sparse.examples()[name], column, err_msg=name)


def test_label_counts_and_decoder_cosine() -> None:
    data = synthetic(rows=120)
    stats = accumulate(data, 50, StatsOptions())
    table = stats.labels()
    f = data["f"]
    for feat, label, count in zip(table["feature"], table["label"], table["count"], strict=True):
        assert count == int(((f[:, feat] > 0) & (data["label"] == label)).sum())
    assert table["count"].sum() == int(((f > 0) & (data["label"][:, None] >= 0)).sum())

    w = np.random.default_rng(1).normal(size=(30, 8))
    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_allclose(max_decoder_cosine(torch.from_numpy(w), block=7), sims.max(1))
