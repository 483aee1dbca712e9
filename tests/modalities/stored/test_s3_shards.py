"""An activation cache in a bucket: `thresher harvest --out s3://...` writes shards plus a
manifest with checksums to moto's S3 server on loopback, a `stored` source replays them with
read-ahead, and a corrupt shard is named with the fix."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import thresher
from tests.eeg_data import eeg_config, harvested_rows, write_yaml
from thresher import uri_io
from thresher.cli import main as cli_main
from thresher.modalities.stored.shards import ShardStore, ShardStoreError
from thresher.modalities.stored.store import iter_store, open_store
from thresher.stream.block import ActivationBlock


def test_harvest_to_s3_and_replay_equals_local(tmp_path: Path, s3_uri: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from thresher.config import load_config

    cache = uri_io.join(s3_uri, tmp_path.name, "cache")
    config = write_yaml(tmp_path, eeg_config(tmp_path))
    assert cli_main(["harvest", config, "--out", cache]) == 0
    assert cache in capsys.readouterr().out
    # The objects: shards, the inputs manifest, then a manifest with each shard's checksum.
    manifest = json.loads(uri_io.read_text(uri_io.join(cache, "manifest.json")))
    assert manifest["complete"] and manifest["n_blocks"] == len(manifest["shards"]) > 1
    for shard in manifest["shards"]:
        data = uri_io.read_bytes(uri_io.join(cache, shard["name"]))
        assert len(data) == shard["bytes"]
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
    cfg = load_config(eeg_config(tmp_path))
    direct = harvested_rows(cfg, tmp_path)
    stored = ActivationBlock.concat(list(iter_store(cache)))
    assert np.array_equal(stored.acts, direct.acts)
    assert np.array_equal(stored.example_id, direct.example_id)
    assert np.array_equal(stored.position, direct.position)

    # A run on a `stored` source at the URI trains on the same rows as a run on the model.
    replay = eeg_config(tmp_path)
    replay["run"]["name"] = "replay"
    replay["source"] = {"backbone": {"kind": "stored", "model": cache}, "hook": "layer.1"}
    plan = thresher.plan(replay).describe()
    assert f"shard store {cache!r}: {len(direct)} rows of width {direct.d}" in plan
    original = thresher.run(eeg_config(tmp_path), inline=True, progress=False)
    replayed = thresher.run(replay, inline=True, progress=False)
    assert pq.read_table(original / "inputs" / "s0.parquet").equals(
        pq.read_table(replayed / "inputs" / "s0.parquet"))
    weights = "saes/00-topk/sae_weights.safetensors"
    assert (original / weights).read_bytes() == (replayed / weights).read_bytes()


def test_a_corrupt_shard_is_named_with_the_fix(tmp_path: Path, s3_uri: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from thresher.modalities.stored.shards import ShardWriter

    cache = uri_io.join(s3_uri, tmp_path.name, "bad")
    writer = ShardWriter(cache, backbone={"kind": "x"}, hook="h", source={})
    rng = np.random.default_rng(0)
    for i in range(4):
        writer.add(ActivationBlock(acts=rng.normal(size=(50, 8)).astype(np.float32),
                                   example_id=np.arange(50, dtype=np.int64) + 50 * i,
                                   position=np.zeros(50, dtype=np.int32)))
    writer.close()
    store = open_store(cache)
    assert isinstance(store, ShardStore) and store.n_blocks == 4
    store.close()
    bad = uri_io.join(cache, "shards/00000002.bin")
    data = bytearray(uri_io.read_bytes(bad))
    data[100] ^= 0xFF  # one flipped byte, same size
    uri_io.write_bytes(bad, bytes(data))
    with pytest.raises(ShardStoreError) as err:
        list(iter_store(cache))
    message = str(err.value)
    assert bad in message and "SHA-256" in message and "thresher harvest" in message
    # Through a run: one line naming the shard, exit 2.
    run = eeg_config(tmp_path)
    run["source"] = {"backbone": {"kind": "stored", "model": cache}, "hook": "h"}
    run["train"].update(batch_size=32, rows=64)
    run["stream"].update(chunk_rows=50, holdout_rows=50, norm_rows=50)
    assert cli_main(["run", "--inline", "--no-progress", "--no-report",
                     write_yaml(tmp_path, run)]) == 2
    printed = capsys.readouterr().err.strip().splitlines()
    assert len(printed) == 1 and "shards/00000002.bin" in printed[0]
    assert "is corrupt" in printed[0] and "thresher harvest" in printed[0]
    # A cache whose harvest never finished has no manifest: named, with the fix.
    uri_io.remove(uri_io.join(cache, "manifest.json"))
    with pytest.raises(ShardStoreError, match=r"holds no manifest\.json.*thresher harvest"):
        open_store(cache)
