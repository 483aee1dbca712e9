"""Synthetic latents for the statistics tests, their streaming accumulation, and every statistic
recomputed from its definition over all rows at once (the reference the package is checked
against)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tests.oracles import mono_pairwise
from thresher.analysis.feature_statistics import FeatureStatistics
from thresher.analysis.stats import DENSE_THRESHOLDS, StatsOptions
from thresher.analysis.topk_examples import row_hash


def synthetic(rows: int = 600, d_in: int = 12, d_sae: int = 40, seed: int = 0
              ) -> dict[str, np.ndarray]:
    """Sparse non-negative latents with varied densities, examples spanning several rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, d_in))
    density = np.geomspace(0.002, 0.6, d_sae)
    density[3] = 0.0  # a dead feature
    f = rng.exponential(size=(rows, d_sae)) * (rng.random((rows, d_sae)) < density)
    f[:, 5] += 0.25  # a feature firing on every row: its min is not 0
    x_hat = x * 0.8 + rng.normal(scale=0.1, size=x.shape)
    example_id = np.repeat(np.arange(rows // 6), 6)[:rows].astype(np.int64) * 7 + 3
    position = np.tile(np.arange(6), rows // 6 + 1)[:rows].astype(np.int32)
    label = rng.integers(-1, 4, size=rows)
    return {"x": x, "f": f, "x_hat": x_hat, "example_id": example_id, "position": position,
            "label": label}


def accumulate(data: dict[str, np.ndarray], batch: int, options: StatsOptions
               ) -> FeatureStatistics:
    stats = FeatureStatistics(data["x"].shape[1], data["f"].shape[1], options)
    for s in range(0, len(data["x"]), batch):
        sl = slice(s, s + batch)
        stats.update(torch.from_numpy(data["x"][sl]), torch.from_numpy(data["f"][sl]),
                     torch.from_numpy(data["x_hat"][sl]), data["example_id"][sl],
                     data["position"][sl], data["label"][sl])
    return stats


def brute_force(d: dict[str, np.ndarray], options: StatsOptions) -> dict[str, Any]:
    """Every statistic from its definition, over all rows at once."""
    x, f, x_hat = d["x"], d["f"], d["x_hat"]
    n, d_sae = f.shape
    active = f > 0
    count = active.sum(0)
    rate = count / n
    out: dict[str, Any] = {
        "fire_count": count, "firing_rate": rate, "mean_act": f.mean(0),
        "std_act": f.std(0), "max_act": f.max(0),
        "mean_act_when_active": np.array([f[active[:, j], j].mean() if count[j] else 0.0
                                          for j in range(d_sae)]),
        "mse_per_element": ((x - x_hat) ** 2).mean(),
        "sq_err_per_row": ((x - x_hat) ** 2).sum(1).mean(),
        "fve": 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(),
        "l2_ratio": (np.linalg.norm(x_hat, axis=1) / np.linalg.norm(x, axis=1)).mean(),
        "l0": active.sum(1).mean(), "l1": np.abs(f).sum(1).mean(),
        "dead_fraction": (count == 0).mean(),
        "dense_fraction_1pct": (rate > DENSE_THRESHOLDS[0]).mean(),
        "dense_fraction_10pct": (rate > DENSE_THRESHOLDS[1]).mean(),
        "mono_score": mono_pairwise(f, x),
    }
    top, quantile, purity = {}, {}, np.full(d_sae, np.nan)
    top_label = np.full(d_sae, -1)
    for j in range(d_sae):
        rows = np.flatnonzero(active[:, j])
        best: dict[int, tuple[float, int]] = {}  # example -> (value, position), first on a tie
        for r in rows:
            e, v, p = int(d["example_id"][r]), f[r, j], int(d["position"][r])
            if e not in best or v > best[e][0] or (v == best[e][0] and p < best[e][1]):
                best[e] = (v, p)
        ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[: options.top_n]
        top[j] = [(v, e, p) for e, (v, p) in ranked]
        keys = row_hash(np.full(len(rows), j), d["example_id"][rows], d["position"][rows])
        sample = rows[np.argsort(keys, kind="stable")[: options.reservoir]]
        sample = sample[np.lexsort((d["position"][sample], d["example_id"][sample],
                                    f[sample, j]))]  # by value, ties by example, position
        picks = sorted({int(np.floor((i + 0.5) / options.quantiles * len(sample)))
                        for i in range(options.quantiles)}) if len(sample) else []
        quantile[j] = [(f[sample[i], j], int(d["example_id"][sample[i]])) for i in picks]
        labels = d["label"][rows] if d.get("label") is not None else np.zeros(0, np.int64)
        labels = labels[labels >= 0]
        if len(labels):
            purity[j] = np.bincount(labels).max() / len(labels)
            top_label[j] = np.bincount(labels).argmax()
    out.update(top=top, quantile=quantile, label_purity=purity, top_label=top_label)
    return out


def assert_equal_to_brute_force(feats: dict[str, Any], summary: dict[str, Any],
                                examples: dict[str, Any], ref: dict[str, Any],
                                rtol: float = 1e-10) -> None:
    """Feature columns (indexed by feature), summary metrics and example columns of one SAE
    against `brute_force`'s reference."""
    for name in ("fire_count", "firing_rate", "mean_act", "std_act", "max_act",
                 "mean_act_when_active", "label_purity"):
        np.testing.assert_allclose(np.asarray(feats[name], dtype=np.float64), ref[name],
                                   rtol=rtol, atol=1e-12, err_msg=name)
    count = ref["fire_count"]
    np.testing.assert_array_equal(feats["is_dead"], count == 0)
    np.testing.assert_array_equal(feats["is_dense"], ref["firing_rate"] > DENSE_THRESHOLDS[1])
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(feats["log10_density"], np.log10(ref["firing_rate"]),
                                   rtol=1e-12)
    np.testing.assert_array_equal(feats["top_label"], ref["top_label"])
    np.testing.assert_allclose(feats["mono_score"], ref["mono_score"], rtol=1e-7, atol=1e-9)
    assert np.isnan(np.asarray(feats["mono_score"])[count == 0]).all()
    for name in ("mse_per_element", "sq_err_per_row", "fve", "l2_ratio", "l0", "l1",
                 "dead_fraction", "dense_fraction_1pct", "dense_fraction_10pct"):
        assert summary[name] == pytest.approx(ref[name], rel=rtol), name
    mono = np.nan_to_num(ref["mono_score"])
    assert summary["mono_score_mean"] == pytest.approx(mono.mean(), rel=1e-7)
    assert summary["mono_score_median"] == pytest.approx(np.median(mono), rel=1e-7)
    assert summary["mono_score_p90"] == pytest.approx(np.percentile(mono, 90), rel=1e-7)

    kind, feature = np.asarray(examples["kind"]), np.asarray(examples["feature"])
    value, example_id = np.asarray(examples["activation"]), np.asarray(examples["example_id"])
    for j in range(len(count)):
        mine = (feature == j) & (kind == "top")
        want = ref["top"][j]
        assert list(example_id[mine]) == [e for _, e, _ in want], j
        assert list(np.asarray(examples["position"])[mine]) == [p for _, _, p in want], j
        np.testing.assert_allclose(value[mine], [v for v, _, _ in want], rtol=rtol)
        assert list(np.asarray(examples["rank"])[mine]) == list(range(len(want)))
        mine = (feature == j) & (kind == "quantile")
        assert list(example_id[mine]) == [e for _, e in ref["quantile"][j]], j
        np.testing.assert_allclose(value[mine], [v for v, _ in ref["quantile"][j]], rtol=rtol)
