"""Three nodes (ray.cluster_utils.Cluster, in a subprocess): the pump and the harvesters on the
harvest node, two trainers packed onto the one GPU of each of two train nodes; every trainer
receives the very batches the inline executor cuts, and ends with its weights; each train node
pulls each chunk once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

import thresher
from tests.paths import ROOT
from tests.stored_data import stored_config, write_shards

pytestmark = pytest.mark.slow  # long end-to-end runs: the full suite only



@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run on three nodes (one Cluster costs about a minute here), and the same inline."""
    tmp = tmp_path_factory.mktemp("multinode")
    # 2,048 rows x 64 float32 a shard: 512 KiB blocks, well above what Ray inlines in replies.
    shards = write_shards(tmp / "shards", d=64, shards=12, rows=2048)
    # Four trainers of half a GPU each: two on each train node's one GPU; the harvester takes
    # half the harvest node's.
    resources = {"harvesters": 1, "trainers": 4, "cpus_per_harvester": 1,
                 "gpus_per_harvester": 0.5, "gpus_per_trainer": 0.5}
    cfg = stored_config(tmp / "cluster", shards, stream={"chunk_rows": 2048,
                        "capacity_chunks": 8, "mix_chunks": 2, "holdout_rows": 2048,
                        "norm_rows": 1024},
                        train={"rows": 32 * 256}, resources=resources,
                        sweep=[{"arch": "topk", "k": [4, 8, 12, 16]}])
    config, record = tmp / "config.json", tmp / "where.json"
    config.write_text(json.dumps(cfg))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # A short temp dir of its own: the session Ray's is left alone, and socket paths stay short.
    with tempfile.TemporaryDirectory(prefix="thr-mn-", dir="/tmp") as temp_dir:
        result = subprocess.run([sys.executable, "-m", "tests.multinode_main", str(config),
                                 str(record), temp_dir, "2"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    inline_cfg = {**cfg, "run": {**cfg["run"], "out": str(tmp / "inline")}}
    return {**json.loads(record.read_text()),
            "inline": thresher.run(inline_cfg, inline=True, progress=False)}


def run_json(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "run.json").read_text())


def test_pump_and_harvesters_run_on_the_harvest_node(runs: dict[str, Any]) -> None:
    harvest = run_json(runs["run_dir"])["streams"]["s0"]["harvest"]
    assert harvest["pump_node"] == runs["harvest_node"]
    assert harvest["harvester_nodes"] == [runs["harvest_node"]]
    assert harvest["object_store_mb"] == 200  # the harvest node's store, not the cluster's
    assert harvest["harvest_object_store_mb"] == 50  # the harvest's budget: a quarter of it


def test_trainers_pack_two_to_each_train_node_s_gpu(runs: dict[str, Any]) -> None:
    trainers = run_json(runs["run_dir"])["trainers"]
    assert sorted(trainers) == ["t0", "t1", "t2", "t3"]
    nodes = [info["node_id"] for info in trainers.values()]
    assert sorted(nodes) == sorted(runs["train_nodes"] * 2)  # two trainers a node
    assert runs["harvest_node"] not in nodes
    for info in trainers.values():
        assert info["gpu_ids"] == ["0"]  # 0.5 GPU each: both on their node's GPU 0


def test_remote_trainers_receive_the_inline_batches_and_weights(runs: dict[str, Any]) -> None:
    remote, inline = run_json(runs["run_dir"])["trainers"], run_json(runs["inline"])["trainers"]
    digests = {info["batch_digest"] for info in [*remote.values(), *inline.values()]}
    assert len(digests) == 1  # same rows, same order, for every trainer and both executors
    for sae_dir in sorted((Path(runs["run_dir"]) / "saes").iterdir()):
        a = load_file(sae_dir / "sae_weights.safetensors")
        b = load_file(runs["inline"] / "saes" / sae_dir.name / "sae_weights.safetensors")
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{sae_dir.name} {name}")


def test_each_train_node_pulls_each_chunk_once(runs: dict[str, Any]) -> None:
    """The bandwidth model of docs/design.md: a train node's object store takes in one copy
    of every harvest output its trainers read, however many of them read it there; the pump
    adds nothing of its own."""
    harvest = run_json(runs["run_dir"])["streams"]["s0"]["harvest"]
    streamed = harvest["object_store_bytes_per_row"] * harvest["rows"]
    created = runs["created_bytes"]
    for node in runs["train_nodes"]:
        # Two trainers read every row here: one copy means ~1x, a copy each would be ~2x.
        assert 0.9 * streamed <= created[node] <= 1.25 * streamed, (created[node], streamed)
    # The harvest node holds the outputs themselves, plus the inputs and small replies.
    assert created[runs["harvest_node"]] >= streamed
