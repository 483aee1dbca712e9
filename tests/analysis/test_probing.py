"""Sparse probing: the logistic probe is scikit-learn's (C = 1) to 1e-4; mean-difference picks
the informative latents; on an image folder with two labels the probe on raw activations
beats chance, and every SAE gets its k = 1, 5 probe columns in summary.parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression

import thresher
from tests.tiny_models import TINY_VIT
from thresher.analysis.probing import binary_tasks, fit_logistic, probe_accuracy


def test_logistic_probe_equals_sklearn() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    y = (x @ rng.normal(size=6) + 0.5 * rng.normal(size=200) > 0.3).astype(np.int64)
    w, b = fit_logistic(x, y)
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(w, ref.coef_[0], atol=1e-4)
    assert b == pytest.approx(float(ref.intercept_[0]), abs=1e-4)


def test_mean_difference_picks_the_informative_dimension() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=400)
    x = rng.normal(size=(400, 50))
    x[:, 17] += 4.0 * y  # the one dimension that carries the label (Bayes accuracy 0.98)
    tasks = binary_tasks(y)
    assert len(tasks) == 1  # two labels: one task
    tr, ytr, te, yte = tasks[0]
    assert set(tr).isdisjoint(te) and ytr.mean() == 0.5 and yte.mean() == 0.5
    assert probe_accuracy(x[tr], ytr, x[te], yte, k=1) > 0.85
    x[:, 17] = rng.normal(size=400)  # without it, the probe is at chance
    assert probe_accuracy(x[tr], ytr, x[te], yte, k=1) < 0.7


def _two_label_folder(root: Path, per_label: int = 100) -> Path:
    """Reddish 'warm' and bluish 'cool' noise images: a label a linear probe can read."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, channel in (("warm", 0), ("cool", 2)):
        (root / label).mkdir(parents=True)
        for i in range(per_label):
            pixels = rng.integers(0, 140, (32, 32, 3))
            pixels[..., channel] += rng.integers(60, 115)
            Image.fromarray(pixels.astype(np.uint8)).save(root / label / f"{i}.png")
    return root


def test_image_folder_probing_per_sae(tmp_path: Path) -> None:
    images = _two_label_folder(tmp_path / "images")
    cfg = {
        "run": {"name": "probe", "out": str(tmp_path / "runs"), "seed": 0},
        "source": {"backbone": {"kind": "hf_vision", "model": "", "config": TINY_VIT},
                   "hook": "layer.1", "tokens": "all", "batch_size": 16,
                   "inputs": {"kind": "image_folder", "paths": [str(images)]}},
        "stream": {"chunk_rows": 256, "capacity_chunks": 8, "mix_chunks": 2,
                   "holdout_rows": 1360, "norm_rows": 256},
        "train": {"batch_size": 128, "rows": 128 * 8, "checkpoint_every": 8,
                  "warmup_steps": 2, "d_sae": 64, "k": 8, "lr": 3e-3},
        "sweep": [{"arch": "topk", "k": [4, 8]}, {"arch": "relu", "l1_coef": 1.0}],
        "resources": {"harvesters": 1, "trainers": 1, "harvester_threads": 1,
                      "trainer_threads": 1},
    }
    run = thresher.run(cfg, inline=True, progress=False)
    summary = pq.read_table(run / "stats/summary.parquet").to_pandas()
    assert len(summary) == 3
    assert (summary["probe_tasks"] == 1).all()
    assert (summary["probe_raw_acc"] > 0.75).all()  # chance is 0.5 (balanced test side)
    assert (summary["probe_raw_k5_acc"] > 0.6).all()
    assert summary["probe_raw_acc"].nunique() == 1  # one baseline per hook, on every row
    for k in (1, 5):
        acc = summary[f"probe_sae_k{k}_acc"]
        assert acc.between(0, 1).all() and acc.notna().all()
    from thresher.analysis.report import write_report

    page = Path(write_report(run)).read_text()
    assert "<table id='probing'>" in page and page.count("<tr>") >= 3 + 3
    assert "id='ground-truth'" not in page  # not a synthetic source: no such table
