"""Errors before anything starts (issue 12, item 3): `thresher plan` (and so the start of
`thresher run`) refuses a hook the model does not have and a bad store, in one line naming the
file or key and the fix. Before, each was accepted and failed inside a worker later."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

import thresher
from thresher.cli import main
from thresher.config import ConfigError
from thresher.modalities.stored.lmdb import StoreWriter
from thresher.stream.block import ActivationBlock

from .conftest import smoke_config
from .stored_data import HOOK, stored_config, write_shards
from .tiny_models import TINY_TL


def _one_line_error(cfg: dict) -> str:
    with pytest.raises(ConfigError) as err:
        thresher.plan(cfg)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_layer_minilm_does_not_have(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path)
    cfg["source"]["hook"] = "layer.9"
    message = _one_line_error(cfg)
    assert "'layer.9'" in message and "6-layer" in message and "layer.5" in message
    cfg["source"]["hook"] = "layer.5"
    thresher.plan(cfg)  # the last layer is fine


def test_a_transformer_lens_block_past_the_last(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path)
    cfg["source"].update(backbone={"kind": "transformer_lens", "model": "", "config": TINY_TL},
                         hook="blocks.5.hook_resid_post")
    message = _one_line_error(cfg)
    assert "block 5" in message and "2 blocks" in message and "blocks.1" in message


def test_npy_shards_of_another_width_or_dtype(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", d=48, shards=3, rows=64)
    np.save(shards / "0001.npy", np.zeros((64, 64), dtype=np.float32))  # one odd shard
    message = _one_line_error(stored_config(tmp_path, shards))
    assert str(shards / "0001.npy") in message and "width 64" in message
    assert "rewrite or remove" in message
    np.save(shards / "0001.npy", np.zeros((64, 48), dtype=np.int64))
    message = _one_line_error(stored_config(tmp_path, shards))
    assert str(shards / "0001.npy") in message and "int64" in message and "float" in message


def test_a_truncated_lmdb_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "cache"
    writer = StoreWriter(store, backbone={"kind": "x"}, hook=HOOK, source={})
    rng = np.random.default_rng(0)
    for _ in range(4):
        writer.add(ActivationBlock(acts=rng.normal(size=(256, 32)).astype(np.float32),
                                   example_id=np.arange(256, dtype=np.int64),
                                   position=np.zeros(256, dtype=np.int32)))
    writer.close()
    data = store / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)
    cfg = stored_config(tmp_path, store)
    message = _one_line_error(cfg)
    assert str(store) in message and "truncated" in message and "harvest it again" in message
    # The command line: exit 2, one line on stderr, nothing started.
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["plan", str(path)]) == 2
    assert main(["run", "--inline", "--no-report", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("truncated" in line for line in err)
    assert not (tmp_path / "stored").exists()  # no run directory was created
