"""The activation cache: harvest -> LMDB -> replay gives identical rows; bad stores say so."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import thresher
from tests.eeg_data import eeg_config, harvested_rows, write_yaml
from tests.image_data import write_images
from tests.tiny_models import TINY_CLIP
from thresher.cli import main as cli_main
from thresher.config import ConfigError, load_config
from thresher.harvest.harvester import Harvester
from thresher.harvest.inputs import prepare_inputs
from thresher.modalities.stored.errors import StoreError
from thresher.modalities.stored.lmdb import StoreWriter
from thresher.modalities.stored.store import iter_store, open_store
from thresher.stream.block import ActivationBlock


def test_lmdb_round_trip_and_stored_replay(tmp_path: Path) -> None:
    cfg = load_config(eeg_config(tmp_path))
    store = tmp_path / "cache"
    assert cli_main(["harvest", write_yaml(tmp_path, eeg_config(tmp_path)),
                     "--out", str(store)]) == 0
    direct = harvested_rows(cfg, tmp_path)
    stored = ActivationBlock.concat(list(iter_store(store)))
    assert np.array_equal(stored.acts, direct.acts)
    assert np.array_equal(stored.example_id, direct.example_id)
    assert np.array_equal(stored.position, direct.position)
    opened = open_store(store)
    header = opened.header
    assert header["hook"] == "layer.1" and header["backbone"]["kind"] == "patchtst"
    assert header["dtype"] == "float32" and header["n_rows"] == len(direct)
    inputs = prepare_inputs(cfg.source, 0, tmp_path)
    assert opened.manifest().equals(inputs.manifest)
    opened.close()

    # Replayed through a run: the same rows reach the SAEs, the manifest lands in the run.
    replay = eeg_config(tmp_path)
    replay["run"]["name"] = "replay"
    replay["source"] = {"backbone": {"kind": "stored", "model": str(store)}, "hook": "layer.1"}
    original = thresher.run(eeg_config(tmp_path), inline=True, progress=False)
    replayed = thresher.run(replay, inline=True, progress=False)
    assert pq.read_table(original / "inputs" / "s0.parquet").equals(
        pq.read_table(replayed / "inputs" / "s0.parquet"))
    cols = ["sae_id", "input_scale", "rows_trained", "mse_per_element", "fve", "l0",
            "dead_fraction"]
    assert (pq.read_table(original / "stats/summary.parquet").select(cols).to_pylist()
            == pq.read_table(replayed / "stats/summary.parquet").select(cols).to_pylist())
    weights = "saes/00-topk/sae_weights.safetensors"
    assert (original / weights).read_bytes() == (replayed / weights).read_bytes()
    digest = [json.loads((d / "run.json").read_text())["trainers"]["t0"]["batch_digest"]
              for d in (original, replayed)]
    assert digest[0] == digest[1]
    with pytest.raises(ConfigError, match=r"set source\.hook to 'layer\.1'"):
        prepare_inputs(load_config({**replay, "source": {**replay["source"], "hook": "layer.0"}})
                       .source, 0, tmp_path)


def _small_store(path: Path, labelled: bool = True) -> list[ActivationBlock]:
    rng = np.random.default_rng(0)
    blocks = [ActivationBlock(acts=rng.normal(size=(n, 6)).astype(np.float32),
                              example_id=np.arange(n, dtype=np.int64) + 100 * i,
                              position=np.arange(n, dtype=np.int32)[::-1].copy(),
                              label=np.full(n, i, dtype=np.int64) if labelled else None)
              for i, n in enumerate((5, 3, 7))]
    writer = StoreWriter(path, backbone={"kind": "x"}, hook="h", source={})
    for block in blocks:
        writer.add(block)
    writer.close()
    return blocks


def test_store_keeps_labels_and_refuses_bad_stores(tmp_path: Path) -> None:
    blocks = _small_store(tmp_path / "ok")
    for got, want in zip(iter_store(tmp_path / "ok"), blocks, strict=True):
        for name in ("acts", "example_id", "position", "label"):
            assert np.array_equal(getattr(got, name), getattr(want, name))

    truncated = tmp_path / "truncated"
    shutil.copytree(tmp_path / "ok", truncated)
    data = truncated / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)
    with pytest.raises(StoreError, match="truncated"):
        open_store(truncated)
    os.truncate(data, 100)
    with pytest.raises(StoreError, match="corrupt or truncated"):
        open_store(truncated)

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tmp_path / "ok", corrupt)
    raw = bytearray((corrupt / "data.mdb").read_bytes())
    acts = blocks[2].acts.tobytes()[:24]  # flip bytes inside the stored rows of block 2
    at = bytes(raw).find(acts)
    assert at > 0
    while at >= 0:  # every copy: LMDB pages are copy-on-write, stale copies may remain
        raw[at:at + 8] = bytes(b ^ 0xFF for b in raw[at:at + 8])
        at = bytes(raw).find(acts)
    (corrupt / "data.mdb").write_bytes(bytes(raw))
    store = open_store(corrupt)
    store.block(0)
    with pytest.raises(StoreError, match="block 2 fails its checksum"):
        store.block(2)
    store.close()

    incomplete = tmp_path / "incomplete"
    writer = StoreWriter(incomplete, backbone={}, hook="h", source={})
    writer.add(blocks[0])
    writer._env.close()  # a harvest that died before close()
    with pytest.raises(StoreError, match="incomplete"):
        open_store(incomplete)
    with pytest.raises(StoreError, match="already holds"):
        StoreWriter(tmp_path / "ok", backbone={}, hook="h", source={})
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "missing")


def test_npy_shard_folder_reads_like_a_store(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(2, 3)).astype(np.float32)
    np.save(folder / "000.npy", a)
    np.save(folder / "000.label.npy", np.array([1, 1, 2, 2]))
    np.save(folder / "001.npy", b)
    np.save(folder / "002.part.1.npy", b[::-1])  # dots in a shard's name: still a shard
    np.save(folder / "002.part.1.position.npy", np.array([7, 9], dtype=np.int32))
    (folder / "header.json").write_text(json.dumps({"hook": "blocks.3.hook_resid_post"}))
    got = list(iter_store(folder))
    assert len(got) == 3
    assert np.array_equal(got[0].acts, a) and np.array_equal(got[1].acts, b)
    assert got[0].label.tolist() == [1, 1, 2, 2]
    assert got[1].example_id.tolist() == [4, 5]  # global row index where none is stored
    assert got[2].position.tolist() == [7, 9] and got[2].example_id.tolist() == [6, 7]
    source = load_config({"source": {"backbone": {"kind": "stored", "model": str(folder)},
                                     "hook": "blocks.3.hook_resid_post"}}).source
    inputs = prepare_inputs(source, 0, tmp_path)
    harvester = Harvester(source, base_dir=tmp_path)
    replayed = ActivationBlock.concat([harvester.harvest(x) for x in inputs.batches])
    assert np.array_equal(replayed.acts, np.concatenate([a, b, b[::-1]]))
    (folder / "001.npy").write_bytes(b"\x93NUMPY junk")
    with pytest.raises(StoreError, match="corrupt or truncated"):
        list(iter_store(folder))


def test_image_store_keeps_labels(tmp_path: Path) -> None:
    root = write_images(tmp_path / "imgs")
    cfg = {"run": {"name": "img", "out": str(tmp_path)},
           "source": {"backbone": {"kind": "open_clip", "model": "ViT-B-32",
                                   "config": TINY_CLIP},
                      "hook": "layer.1", "tokens": "cls",
                      "inputs": {"kind": "image_folder", "paths": [str(root)]},
                      "batch_size": 4}}
    from thresher.harvest.to_store import harvest_to_store

    path = harvest_to_store(load_config(cfg), tmp_path / "store")
    rows = ActivationBlock.concat(list(iter_store(path)))
    manifest = open_store(path).manifest()
    assert rows.label is not None and len(rows) == 6
    assert rows.label.tolist() == [manifest.column("label")[i].as_py() for i in rows.example_id]
