"""The synthetic source: rows from a known dictionary, deterministic per block, with the firing
structure its config asks for; and the ground-truth columns of a run on it equal
sae_lens.synthetic.evals's metrics for the same SAEs (thresher's exports loaded by sae_lens) and
the same rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import thresher
from thresher.analysis.analyze import analyze_run
from thresher.config import ConfigError, load_config
from thresher.modalities.contract import BlockIndexBatch
from thresher.modalities.synthetic.model import SyntheticModel, model_of, true_fires
from thresher.modalities.synthetic.source import SyntheticBackbone

HIER = {"n_features": 96, "d_in": 24, "mean_l0": 3.0, "n_parents": 6, "children_per_parent": 3,
        "child_prob": 0.6, "correlation_rank": 2, "correlation_strength": 0.3,
        "block_rows": 512, "seed": 3}


def _source(**extra: object) -> dict:
    return {"backbone": {"kind": "synthetic", **HIER, **extra}, "hook": "synthetic"}


def feature_prob(m: SyntheticModel) -> np.ndarray:
    """Marginal firing probability of every feature, from the model's firing rule."""
    p = np.zeros(m.cfg.n_features)
    p[m.roots] = m.root_prob
    if m.cfg.n_parents:
        share = m.cfg.child_prob / m.cfg.children_per_parent
        p[m.children] = m.root_prob[: m.cfg.n_parents, None] * share
    return p


def dense_feature_acts(m: SyntheticModel, block: int) -> np.ndarray:
    """Block `block`'s true activations as a dense [rows, features] array."""
    row, feat, value, rows = m.feature_acts(block)
    a = np.zeros((rows, m.cfg.n_features), dtype=np.float32)
    a[row, feat] = value
    return a


def _model(**extra: object) -> SyntheticModel:
    return model_of(load_config({"source": _source(**extra)}).source)


def test_blocks_are_a_function_of_seed_and_index() -> None:
    source = load_config({"source": _source()}).source
    a, b = SyntheticBackbone(source), SyntheticBackbone(source)
    first = a.harvest(BlockIndexBatch.of(2))
    assert np.array_equal(first.acts, b.harvest(BlockIndexBatch.of(2)).acts)
    assert not np.array_equal(first.acts, a.harvest(BlockIndexBatch.of(1)).acts)
    assert first.example_id[0] == 2 * 512 and first.hook_layout == (("synthetic", 24),)
    m = a.model
    row, feat, value, rows = m.feature_acts(2)
    x = np.zeros((rows, 24))
    for r, f, v in zip(row, feat, value, strict=True):
        x[r] += v * m.dictionary[f]
    np.testing.assert_allclose(first.acts, x, rtol=1e-5, atol=1e-5)


def test_firing_follows_zipf_hierarchy_and_exclusion() -> None:
    m = _model()
    a = np.concatenate([dense_feature_acts(m, i) for i in range(40)]) > 0  # 20480 rows
    rate = a.mean(0)
    p = feature_prob(m)
    tolerance = 5 * np.sqrt(p * (1 - p) / len(a)) + 1e-4
    assert np.all(np.abs(rate - p) < tolerance)  # marginals kept under the copula
    assert np.all(np.diff(p[m.roots]) <= 0) and p[m.roots][0] > 5 * p[m.roots][-1]
    for j, children in enumerate(m.children):
        on = a[:, children]
        assert not (on.any(1) & ~a[:, j]).any()  # no child without its parent
        assert on.sum(1).max() <= 1  # siblings mutually exclusive
    # The low-rank copula correlates firing: the roots' co-firing departs from independence.
    indep = _model(correlation_rank=0)
    b = np.concatenate([dense_feature_acts(indep, i) for i in range(40)]) > 0
    roots = m.roots[:20]
    spread = np.corrcoef(a[:, roots].T)[np.triu_indices(20, 1)]
    flat = np.corrcoef(b[:, roots].T)[np.triu_indices(20, 1)]
    assert np.abs(spread).mean() > 2 * np.abs(flat).mean()


def test_true_fires_matches_the_dense_activations() -> None:
    m = _model()
    ids = np.array([5, 1030, 3, 600, 1030 + 512])
    feats = np.array([0, 7, 7, 50])
    fires, entries = true_fires(m, ids, feats)
    dense = np.concatenate([dense_feature_acts(m, i) for i in range(4)])
    np.testing.assert_array_equal(fires, dense[ids][:, feats] > 0)
    assert entries == int((dense[ids] > 0).sum())


def test_bad_synthetic_config_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"n_feature.*did you mean `n_features`"):
        load_config({"source": {"backbone": {"kind": "synthetic", "n_feature": 3},
                                "hook": "synthetic"}})
    with pytest.raises(ConfigError, match=r"n_parents is 40.*lower n_parents"):
        load_config({"source": _source(n_parents=40)})
    with pytest.raises(ConfigError, match=r"set source.hook to it"):
        load_config({"source": {**_source(), "hook": "layer.3"}})


@pytest.mark.slow
def test_run_ground_truth_equals_saelens_synthetic_evals(tmp_path: Path) -> None:
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.synthetic.evals import (
        compute_classification_metrics,
        feature_uniqueness,
        mean_correlation_coefficient,
    )

    cfg = {
        "run": {"name": "gt", "out": str(tmp_path), "seed": 0},
        "source": _source(),
        "stream": {"chunk_rows": 512, "capacity_chunks": 8, "mix_chunks": 2,
                   "holdout_rows": 1024, "norm_rows": 512},
        "train": {"batch_size": 128, "rows": 128 * 40, "checkpoint_every": 40,
                  "warmup_steps": 4, "d_sae": 64, "k": 4, "lr": 3e-3},
        "sweep": [{"arch": ["topk", "batchtopk", "matryoshka"]},
                  {"arch": "jumprelu", "l0_coef": 1.0}, {"arch": "relu", "l1_coef": 1.0}],
        "resources": {"harvesters": 1, "trainers": 1, "harvester_threads": 1,
                      "trainer_threads": 1},
    }
    run = thresher.run(cfg, inline=True, progress=False)
    summary = pq.read_table(run / "stats/summary.parquet").to_pandas().set_index("sae_id")
    assert len(summary) == 5

    m = model_of(load_config({"source": _source()}).source)
    x = torch.from_numpy(np.concatenate([m.block_acts(i) for i in range(2)]))  # the holdout
    truth = torch.from_numpy(np.concatenate([dense_feature_acts(m, i) for i in range(2)]))
    gt = torch.from_numpy(m.dictionary).float()
    for sae_id, row in summary.iterrows():
        sae = sae_lens.SAE.load_from_disk(str(run / "saes" / sae_id), device="cpu")
        with torch.no_grad():
            latents = sae.encode(x)
        w_dec = sae.W_dec.detach()
        classes = compute_classification_metrics(latents, truth, w_dec, gt)
        ref = {"gt_mcc": mean_correlation_coefficient(w_dec, gt),
               "gt_uniqueness": feature_uniqueness(w_dec, gt),
               "gt_precision": classes.precision, "gt_recall": classes.recall,
               "gt_f1": classes.f1_score}
        for name, value in ref.items():
            assert row[name] == pytest.approx(value, abs=1e-4), (sae_id, name)
        assert 0 < row["gt_f1"] < 1 and 0.2 < row["gt_mcc"] < 1
        assert row["gt_l0"] == pytest.approx(float((truth > 0).sum(1).float().mean()))

    from thresher.analysis.report import write_report

    page = Path(write_report(run)).read_text()
    assert "<table id='ground-truth'>" in page and "id='probing'" not in page

    # `thresher analyze` recomputes them from the exports alone: the same numbers, with or
    # without the language-model metrics (`--no-lm-metrics` skips CE/KL only).
    analyze_run(run, lm_metrics=False)
    again = pq.read_table(run / "stats/summary.parquet").to_pandas().set_index("sae_id")
    for name in ("gt_mcc", "gt_uniqueness", "gt_precision", "gt_recall", "gt_f1"):
        np.testing.assert_allclose(again[name], summary[name], atol=1e-4)
