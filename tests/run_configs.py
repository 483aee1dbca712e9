"""Run configs as a user writes them (plain dicts), and the edits tests make to them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


def smoke_config(out: Path, **overrides: Any) -> dict[str, Any]:
    """A run of a few tens of seconds: MiniLM (real weights) layer 3 on stdlib docstrings."""
    cfg: dict[str, Any] = {
        "run": {"name": "smoke", "out": str(out), "seed": 0},
        "source": {
            "backbone": {"kind": "hf_text", "model": "minilm"},
            "hook": "layer.3",
            "inputs": {"kind": "python_docstrings", "context": 64, "max_tokens": 14000},
            "batch_size": 32,
        },
        "stream": {"chunk_rows": 1024, "capacity_chunks": 8, "mix_chunks": 2,
                   "holdout_rows": 2048, "norm_rows": 1024},
        "train": {"batch_size": 256, "rows": 8192, "checkpoint_every": 8, "warmup_steps": 4,
                  "d_sae": 256, "k": 16, "lr": 2e-3},
        "sweep": [{"arch": "topk", "k": [8, 16]}, {"arch": "relu", "l1_coef": 1.0}],
        "resources": {"harvesters": 1, "trainers": 2, "cpus_per_harvester": 1,
                      "cpus_per_trainer": 0, "harvester_threads": 1, "trainer_threads": 1},
    }
    return with_overrides(cfg, overrides)


def with_overrides(cfg: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`cfg` with each section's keys updated from `overrides` (a non-dict replaces)."""
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(cfg.get(section), dict):
            cfg[section] = {**cfg[section], **values}
        else:
            cfg[section] = values
    return cfg


def with_arch_settings(train: Any, **changes: Any) -> Any:
    """A copy of a TrainConfig with each change made in every architecture's settings that
    have the field (coef_warmup=0.3 sets relu's and jumprelu's)."""
    from thresher.config import ARCH_SPECS

    unused = set(changes)
    replaced = {}
    for spec in ARCH_SPECS:
        names = {f.name for f in dataclasses.fields(spec.settings)}
        mine = {k: v for k, v in changes.items() if k in names}
        unused -= set(mine)
        replaced[spec.name] = dataclasses.replace(train.arch_settings(spec.name), **mine)
    if unused:
        raise TypeError(f"no architecture has the settings {sorted(unused)}")
    return dataclasses.replace(train, **replaced)
