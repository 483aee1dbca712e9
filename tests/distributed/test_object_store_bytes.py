"""The Ray stream moves each activation byte once: the pump process never holds a chunk's rows.

A stored source of 32 MiB chunks (16,384 rows x 512 float32): the pump hands on the harvester
actors' refs and the trainers read the object store themselves, so the pump's memory must grow
by far less than one chunk while five chunks pass through it. The bytes per row the run reports
are checked against what Ray's object store holds for a block of that form.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import thresher
from tests.stored_data import HOOK, stored_config
from thresher.stream.block import ActivationBlock

pytestmark = pytest.mark.slow  # long end-to-end runs: the full suite only

ROWS, D = 16_384, 512
CHUNK_BYTES = ROWS * D * 4


def test_pump_never_holds_a_chunk_s_rows(ray_session: Any, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        np.save(shards / f"{i:04d}.npy", rng.normal(size=(ROWS, D)).astype(np.float32))
    (shards / "header.json").write_text(json.dumps({"hook": HOOK}))
    cfg = stored_config(
        tmp_path / "runs", shards, name="pump-rows",
        stream={"chunk_rows": ROWS, "capacity_chunks": 4, "mix_chunks": 1,
                "holdout_rows": ROWS, "norm_rows": 4096},
        train={"batch_size": 4096, "rows": 4 * ROWS, "checkpoint_every": 4,
               "warmup_steps": 1, "d_sae": 128, "k": 8, "lr": 1e-3},
        sweep=[{"arch": "topk"}])
    run = thresher.run(cfg, progress=False)
    record = json.loads((run / "run.json").read_text())
    harvest = record["streams"]["s0"]["harvest"]
    assert harvest["rows"] >= 5 * ROWS  # the holdout and every training chunk went through it
    # The pump's memory grew by far less than one chunk while it streamed five of them.
    assert harvest["pump_rss_growth_bytes"] < CHUNK_BYTES / 2, harvest["pump_rss_growth_bytes"]
    # What each row costs the object store, as Ray measures an object of a block's columns:
    # the bytes per row the run reports (activations and metadata, once), and a few hundred
    # bytes of framing per object.
    block = ActivationBlock(acts=np.ones((ROWS, D), np.float32),
                            example_id=np.arange(ROWS), position=np.zeros(ROWS, np.int32),
                            hook_layout=((HOOK, D),))
    ref = ray_session.put(block.to_columns())
    size = ray_session.experimental.get_object_locations([ref])[ref]["object_size"]
    assert 0 <= size - harvest["object_store_bytes_per_row"] * ROWS < 4096, size
    (trainer,) = record["trainers"].values()
    assert trainer["batches"] == 16 and trainer["skipped_nonfinite_batches"] == 0
