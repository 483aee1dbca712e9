"""Run locations: local paths and an S3 object store (moto's server on loopback) alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from thresher import uri_io
from thresher.rundir import RunDirError


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "runs")
    return uri_io.join(request.getfixturevalue("s3_uri"), tmp_path.name)


def test_join_keeps_uri_options() -> None:
    uri = "s3://bucket/runs?endpoint_override=h:9&scheme=http"
    assert uri_io.join(uri, "a", "b.json") == (
        "s3://bucket/runs/a/b.json?endpoint_override=h:9&scheme=http")
    assert uri_io.name_of(uri_io.join(uri, "a", "b.json")) == "b.json"
    assert uri_io.join("/tmp/x", "a") == "/tmp/x/a"
    assert uri_io.local_path("file:///tmp/x/a") == Path("/tmp/x/a")
    assert uri_io.local_path(uri) is None


def test_files_round_trip(root: str) -> None:
    target = uri_io.join(root, "run", "stats", "t.json")
    assert not uri_io.exists(target) and uri_io.walk(uri_io.join(root, "run")) == []
    uri_io.write_text(target, '{"a": 1}')
    assert uri_io.read_text(target) == '{"a": 1}'
    assert uri_io.is_file(target) and uri_io.is_dir(uri_io.join(root, "run", "stats"))
    uri_io.write_bytes(target, b"second")  # replaces whole
    assert uri_io.read_bytes(target) == b"second"
    table = pa.table({"x": [1, 2, 3], "y": ["a", "b", "c"]})
    uri_io.write_parquet(uri_io.join(root, "run", "stats", "t.parquet"), table)
    assert uri_io.read_parquet(uri_io.join(root, "run", "stats", "t.parquet")).equals(table)
    assert uri_io.read_parquet(uri_io.join(root, "run", "stats", "t.parquet"),
                                columns=["y"]).column_names == ["y"]
    assert uri_io.walk(uri_io.join(root, "run")) == ["stats/t.json", "stats/t.parquet"]
    with pytest.raises(FileNotFoundError):
        uri_io.read_bytes(uri_io.join(root, "run", "missing.json"))
    uri_io.remove(uri_io.join(root, "run"))
    assert not uri_io.exists(target)


def test_a_failed_local_write_leaves_the_previous_file(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state.json"
    uri_io.write_text(target, "old")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)  # the disk fills up mid-write
    with pytest.raises(OSError, match="No space left"):
        uri_io.write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left behind


def test_a_process_that_did_not_make_a_working_copy_publishes_what_it_writes_there(
        s3_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process writes into the working copy by its local path alone: the file reaches
    the object store, and a plain local folder beside the copies is not taken for one."""
    monkeypatch.setenv(uri_io.WORKDIR_ENV, str(tmp_path / "copies"))
    location = uri_io.join(s3_uri, tmp_path.name, "run")
    copy = uri_io.working_dir(location)
    plain = tmp_path / "copies" / "plain" / "x.json"
    writer = ("import sys; from thresher import uri_io; "
              "uri_io.save_json(sys.argv[1], {'a': 1}); uri_io.save_json(sys.argv[2], {'b': 2})")
    subprocess.run([sys.executable, "-c", writer, str(copy / "stats" / "x.json"), str(plain)],
                   check=True, env=os.environ.copy())
    assert json.loads(uri_io.read_text(uri_io.join(location, "stats", "x.json"))) == {"a": 1}
    assert uri_io.walk(location) == ["stats/x.json"]
    assert uri_io.location_of(plain) == str(plain) and json.loads(plain.read_text()) == {"b": 2}


# -- whole runs in an object store ---------------------------------------------------------------


def _weights(location: str) -> dict[str, bytes]:
    """Every exported SAE's weights file under a run location, by SAE id."""
    saes = uri_io.join(location, "saes")
    return {name.split("/")[0]: uri_io.read_bytes(uri_io.join(saes, name))
            for name in uri_io.walk(saes) if name.endswith("/sae_weights.safetensors")}


@pytest.mark.slow
def test_an_s3_run_resumes_and_is_analysed_on_other_machines(
        s3_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each "machine" is a working-copy folder of its own (THRESHER_WORKDIR): what one wrote
    reaches the others only through the object store."""
    import thresher
    from tests.stored_data import stored_config, write_shards
    from thresher.analysis.analyze import analyze_run

    out = uri_io.join(s3_uri, tmp_path.name)
    cfg = stored_config(out, write_shards(tmp_path / "shards", d=32, shards=12),
                        train={"rows": 16 * 256})
    monkeypatch.setenv(uri_io.WORKDIR_ENV, str(tmp_path / "machine-a"))
    location = thresher.run(cfg, inline=True, progress=False)
    assert location == uri_io.join(out, "stored")
    files = uri_io.walk(location)
    for name in ("run.json", "stats/summary.parquet",
                 "stats/features.parquet", "saes/00-topk-k8/cfg.json",
                 "saes/00-topk-k8/checkpoint/state.json"):
        assert name in files, name
    # only the two newest checkpoint generations are kept, remotely too
    assert len([f for f in files if f.startswith("saes/00-topk-k8/checkpoint/state-")]) == 2
    first = _weights(location)
    summary = uri_io.read_parquet(uri_io.join(location, "stats", "summary.parquet"))

    with pytest.raises(RunDirError, match="already holds a run"):
        thresher.run(cfg, inline=True, progress=False)  # the remote run.json is seen

    # Machine B resumes: its trainers find their checkpoints in the store, at the last step.
    monkeypatch.setenv(uri_io.WORKDIR_ENV, str(tmp_path / "machine-b"))
    assert thresher.resume(location, inline=True, progress=False) == location
    record = json.loads(uri_io.read_text(uri_io.join(location, "run.json")))
    assert record["status"] == "complete" and record["trainers"]["t0"]["resumed_from_step"] == 16
    assert _weights(location) == first

    # Machine C recomputes the statistics from the exported SAEs alone.
    monkeypatch.setenv(uri_io.WORKDIR_ENV, str(tmp_path / "machine-c"))
    analyze_run(location, lm_metrics=False)
    again = uri_io.read_parquet(uri_io.join(location, "stats", "summary.parquet"))
    assert again.column("fve").to_pylist() == pytest.approx(summary.column("fve").to_pylist())
    assert not list((tmp_path / "machine-c").rglob("state-*.safetensors"))  # not pulled


@pytest.mark.slow
def test_ray_trainers_write_an_s3_run_from_their_own_working_copy(
        ray_session: Any, s3_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver's working copy is elsewhere than the actors' (their THRESHER_WORKDIR is
    unset): the exported SAEs reach the store from the trainers, not from the driver."""
    import thresher
    from tests.stored_data import stored_config, write_shards

    out = uri_io.join(s3_uri, tmp_path.name)
    cfg = stored_config(out, write_shards(tmp_path / "shards", d=32, shards=12),
                        train={"rows": 16 * 256})
    monkeypatch.setenv(uri_io.WORKDIR_ENV, str(tmp_path / "driver"))
    location = thresher.run(cfg, progress=False)
    files = uri_io.walk(location)
    assert {"saes/00-topk-k8/sae_weights.safetensors", "saes/01-topk-k16/sae_weights.safetensors",
            "stats/summary.parquet", "stats/curves.parquet"} <= set(files)
    driver_copy = uri_io.working_dir(location)
    assert not (driver_copy / "saes").exists()  # written by the trainers, elsewhere
