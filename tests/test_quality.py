"""The default recipe learns real structure: SAEs beat PCA on held-out MiniLM activations.

A shorter version of the built-in default run (inline, so it needs no Ray): every SAE explains
more than half the held-out variance, and each TopK SAE beats a PCA with k components fit on
the same training rows. `benchmarks/default_quality.py` runs the same check on the full default.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

import thresher
from thresher.analysis.baselines import pca_fve
from thresher.config import load_config
from thresher.harvest.collect import collect_stream


def quality_config(out: Path) -> dict:
    cfg = load_config(None).to_dict()
    cfg.pop("source_file")
    cfg["run"].update(name="quality", out=str(out))
    cfg["source"]["inputs"]["max_tokens"] = 80_000
    cfg["stream"].update(holdout_rows=8192)
    cfg["train"].update(tokens=57_344, checkpoint_every=1000)  # 56 steps of 1024 rows
    cfg["sweep"] = [{"arch": "topk", "k": 32, "lr": 2e-3}, {"arch": "relu", "l1": 3.0}]
    cfg["resources"].update(trainers=1, harvester_threads=2, trainer_threads=2)
    return cfg


def test_saes_beat_pca_on_heldout_rows(tmp_path: Path) -> None:
    cfg = quality_config(tmp_path)
    run_dir = thresher.run(cfg, inline=True, progress=False)
    summary = pq.read_table(run_dir / "stats" / "summary.parquet").to_pylist()
    heldout, train = collect_stream(load_config(cfg))
    assert len(train) == 57_344
    assert summary[0]["eval_rows"] == len(heldout)
    for row in summary:
        assert row["fve"] > 0.5, row
        if row["arch"] == "topk":
            baseline = pca_fve(train.float32(), heldout.float32(), row["k"])
            assert row["fve"] > baseline, (row["sae_id"], row["fve"], baseline)
