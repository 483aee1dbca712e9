"""Fast runs for the cluster and fault tests: a `stored` source replaying .npy shards.

No backbone forward, so a run's time goes to Ray and the SAEs; the rows are a seeded sparse mix
of dictionary atoms plus noise, so the SAEs have something to learn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tests.run_configs import with_overrides

HOOK = "blocks.0.hook_resid_post"


def write_shards(folder: Path, d: int = 64, shards: int = 40, rows: int = 512,
                 seed: int = 0) -> Path:
    """`shards` files of `rows` rows of width `d`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(4 * d, d)).astype(np.float32)
    for i in range(shards):
        codes = rng.random((rows, 4 * d)) < 0.02
        acts = codes.astype(np.float32) @ atoms + 0.1 * rng.normal(size=(rows, d))
        np.save(folder / f"{i:04d}.npy", acts.astype(np.float32))
    (folder / "header.json").write_text(json.dumps({"hook": HOOK}))
    return folder


def stored_config(out: Path, shards: Path, name: str = "stored", **overrides: Any
                  ) -> dict[str, Any]:
    """A run on the shards: 64 steps of two SAEs on one trainer, a checkpoint every 8."""
    cfg: dict[str, Any] = {
        "run": {"name": name, "out": str(out), "seed": 0},
        "source": {"backbone": {"kind": "stored", "model": str(shards)}, "hook": HOOK},
        "stream": {"chunk_rows": 1024, "capacity_chunks": 8, "mix_chunks": 2,
                   "holdout_rows": 1024, "norm_rows": 1024},
        "train": {"batch_size": 256, "rows": 64 * 256, "checkpoint_every": 8,
                  "warmup_steps": 4, "d_sae": 256, "k": 8, "lr": 2e-3},
        "sweep": [{"arch": "topk", "k": [8, 16]}],
        "resources": {"harvesters": 1, "trainers": 1, "cpus_per_harvester": 1,
                      "cpus_per_trainer": 0, "harvester_threads": 1, "trainer_threads": 1},
    }
    return with_overrides(cfg, overrides)


def long_config(tmp_path: Path) -> Path:
    """A stored run of 1,500 cheap steps, a checkpoint every 8: long enough to interrupt."""
    shards = write_shards(tmp_path / "shards", shards=60)
    cfg = stored_config(tmp_path / "runs", shards, name="long",
                        train={"rows": 1500 * 256, "checkpoint_every": 8, "d_sae": 128})
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
