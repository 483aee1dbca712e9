"""Shared fixtures: one Ray per test session (ray.init costs seconds), an S3 server on
loopback, small run configs."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Credentials for the S3 server on loopback (`s3_uri`; moto accepts any). Set
# before the session Ray starts, so its workers have them too.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "thresher-test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "thresher-test")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts Ray (the session Ray, through any of its fixtures) is `slow`: the fast
    tier checks the executors' logic through their plain classes and leaves Ray to the full
    suite."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    import ray

    os.environ.pop("RAY_ADDRESS", None)  # never join a cluster left around by something else
    ray.init(num_cpus=2, object_store_memory=768 * 2**20, include_dashboard=False,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_uri() -> Iterator[str]:
    """An S3 endpoint on loopback (moto's server, a real HTTP S3 API); yields a bucket URI."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    bucket, _ = pafs.FileSystem.from_uri(f"s3://thresher-test?{options}"
                                         "&allow_bucket_creation=true")
    bucket.create_dir("thresher-test")
    yield f"s3://thresher-test/runs?{options}"
    server.stop()


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
