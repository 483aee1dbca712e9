"""Shared fixtures: one Ray per test session (ray.init costs seconds), an S3 server on
loopback. Small run configs are in tests/run_configs.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
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
