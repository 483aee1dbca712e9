"""Labels on a small real image run: stats/labels.parquet and label purity against brute force.

(The report's image, EEG and text rendering is clicked through in
tests/analysis/test_report_browser.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

import thresher
from tests.image_data import example_image_folder
from tests.tiny_models import TINY_CLIP
from thresher.analysis.analyze import analyze_run, run_config
from thresher.analysis.frozen import load_run_saes
from thresher.analysis.parquet import LABELS_SCHEMA
from thresher.harvest.collect import collect_holdout

RESOURCES = {"harvesters": 1, "trainers": 1, "cpus_per_harvester": 1, "cpus_per_trainer": 0,
             "harvester_threads": 1, "trainer_threads": 1}


def _small_run(out: Path, name: str, source: dict[str, Any], holdout: int) -> Path:
    return thresher.run({
        "run": {"name": name, "out": str(out), "seed": 0}, "source": source,
        "stream": {"chunk_rows": 128, "capacity_chunks": 8, "mix_chunks": 2,
                   "holdout_rows": holdout, "norm_rows": 128},
        "train": {"batch_size": 64, "rows": 512, "checkpoint_every": 4, "warmup_steps": 1,
                  "d_sae": 64, "k": 4},
        "sweep": [{"arch": "topk", "k": [4, 8]}], "resources": RESOURCES,
    }, inline=True, progress=False)


def test_labels_and_purity_match_brute_force(tmp_path: Path) -> None:
    folder = example_image_folder(tmp_path / "images", crops=3)
    run_dir = _small_run(tmp_path, "img", {
        "backbone": {"kind": "open_clip", "model": "ViT-B-32", "config": TINY_CLIP},
        "hook": "layer.1", "inputs": {"kind": "image_folder", "paths": [str(folder)]},
        "batch_size": 8}, holdout=170)  # 10 images x (CLS + 4 x 4 patches)
    # Labels (purity) on this labelled run: `thresher analyze` against brute force.
    analyze_run(run_dir)
    holdout = collect_holdout(run_config(run_dir)[1])
    assert holdout.label is not None and (holdout.label >= 0).all()
    labels = pq.read_table(run_dir / "stats/labels.parquet")
    assert labels.schema.equals(LABELS_SCHEMA)
    labels_df = labels.to_pandas()
    features = pq.read_table(run_dir / "stats/features.parquet").to_pandas()
    for sae in load_run_saes(run_dir):
        f = sae.encode(torch.from_numpy(holdout.float32())).numpy()
        n_labels = int(holdout.label.max()) + 1
        counts = np.stack([((f > 0) & (holdout.label[:, None] == c)).sum(0)
                           for c in range(n_labels)], axis=1)  # [d_sae, labels]
        mine = labels_df[labels_df.sae_id == sae.sae.sae_id]
        got = np.zeros_like(counts)
        got[mine.feature, mine.label] = mine["count"]
        np.testing.assert_array_equal(got, counts)
        feats = features[features.sae_id == sae.sae.sae_id].sort_values("feature")
        fired = counts.sum(1) > 0
        np.testing.assert_allclose(feats.label_purity[fired], counts.max(1)[fired]
                                   / counts.sum(1)[fired], rtol=1e-12)
        np.testing.assert_array_equal(feats.top_label[fired], counts.argmax(1)[fired])
        assert feats.label_purity[~fired].isna().all()
