"""Run locations: local paths and an S3 object store (moto's server on loopback) alike."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from thresher import storage


@pytest.fixture(scope="session")
def s3_uri() -> Iterator[str]:
    """An S3 endpoint on loopback (moto's server, a real HTTP S3 API); yields a bucket URI."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "thresher-test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "thresher-test")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    storage.make_dirs(f"s3://thresher-test?{options}&allow_bucket_creation=true")
    yield f"s3://thresher-test/runs?{options}"
    server.stop()


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "runs")
    return storage.join(request.getfixturevalue("s3_uri"), tmp_path.name)


def test_join_keeps_uri_options() -> None:
    uri = "s3://bucket/runs?endpoint_override=h:9&scheme=http"
    assert storage.join(uri, "a", "b.json") == (
        "s3://bucket/runs/a/b.json?endpoint_override=h:9&scheme=http")
    assert storage.name_of(storage.join(uri, "a", "b.json")) == "b.json"
    assert storage.join("/tmp/x", "a") == "/tmp/x/a"
    assert storage.local_path("file:///tmp/x/a") == Path("/tmp/x/a")
    assert storage.local_path(uri) is None


def test_files_round_trip(root: str) -> None:
    target = storage.join(root, "run", "stats", "t.json")
    assert not storage.exists(target) and storage.list_dir(storage.join(root, "run")) == []
    storage.write_text(target, '{"a": 1}')
    assert storage.read_text(target) == '{"a": 1}'
    assert storage.is_file(target) and storage.is_dir(storage.join(root, "run", "stats"))
    storage.write_bytes(target, b"second")  # replaces whole
    assert storage.read_bytes(target) == b"second"
    table = pa.table({"x": [1, 2, 3], "y": ["a", "b", "c"]})
    storage.write_parquet(storage.join(root, "run", "stats", "t.parquet"), table)
    assert storage.read_parquet(storage.join(root, "run", "stats", "t.parquet")).equals(table)
    assert storage.read_parquet(storage.join(root, "run", "stats", "t.parquet"),
                                columns=["y"]).column_names == ["y"]
    assert storage.list_dir(storage.join(root, "run", "stats")) == ["t.json", "t.parquet"]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "run", "missing.json"))
    storage.remove(storage.join(root, "run"))
    assert not storage.exists(target)


def test_a_failed_local_write_leaves_the_previous_file(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state.json"
    storage.write_text(target, "old")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)  # the disk fills up mid-write
    with pytest.raises(OSError, match="No space left"):
        storage.write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left behind
