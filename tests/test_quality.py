"""The default recipe learns real structure: SAEs beat PCA on held-out MiniLM activations.

A shorter version of the built-in default run (inline, so it needs no Ray) with the default's
ReLU coefficients and its densest TopK SAE: every SAE explains more than half the held-out
variance, has L0 at most 64 and under 5% dense latents (firing on more than 10% of rows), and
beats a PCA fit on the same training rows with k components (k = TopK's k, or the ReLU SAE's L0).
The budget is about half the default's steps (L1 sparsity only tightens with more steps);
`benchmarks/default_quality.py` runs the same check on the full default.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

import thresher
from tests.oracles import pca_fve
from thresher.config import load_config
from thresher.harvest.collect import collect_stream

pytestmark = pytest.mark.slow  # long end-to-end runs: the full suite only


def quality_config(out: Path) -> dict:
    cfg = load_config(None).to_dict()
    cfg["run"].update(name="quality", out=str(out))
    cfg["source"]["inputs"]["max_tokens"] = 80_000
    cfg["stream"].update(holdout_rows=8192)
    cfg["train"].update(rows=57_344, checkpoint_every=1000)  # 56 steps of 1024 rows
    # The default's densest TopK SAE and its ReLU grid, with the default's coefficients.
    relu = next(grid for grid in cfg["sweep"] if grid["arch"] == "relu")
    cfg["sweep"] = [{"arch": "topk", "k": 32, "lr": 2e-3}, relu]
    cfg["resources"].update(trainers=1, harvester_threads=2, trainer_threads=2)
    return cfg


# The suite's longest test by far (`pytest --durations`): twice the per-test limit.
@pytest.mark.timeout(1200)
def test_saes_beat_pca_on_heldout_rows(tmp_path: Path) -> None:
    cfg = quality_config(tmp_path)
    run_dir = thresher.run(cfg, inline=True, progress=False)
    summary = pq.read_table(run_dir / "stats" / "summary.parquet").to_pylist()
    heldout, train = collect_stream(load_config(cfg))
    assert len(train) == 57_344
    assert summary[0]["eval_rows"] == len(heldout)
    assert len(summary) == 3
    for row in summary:
        assert row["fve"] > 0.5, row
        # Worth reading: sparse, and few latents firing on more than 10% of rows.
        assert row["l0"] <= 64 and row["dense_fraction_10pct"] < 0.05, row
        # PCA with as many components as the SAE has active latents per row.
        k = row["k"] if row["arch"] == "topk" else max(1, round(row["l0"]))
        baseline = pca_fve(train.float32(), heldout.float32(), k)
        assert row["fve"] > baseline, (row["sae_id"], row["fve"], baseline)
