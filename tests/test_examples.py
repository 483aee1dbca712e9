"""Every example config runs through `thresher run` to Parquet statistics (inline; one on Ray)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

import thresher
from tests.image_data import example_image_folder
from tests.paths import EXAMPLES
from tests.tiny_models import TINY_VIT
from thresher.analysis.parquet import SUMMARY_SCHEMA
from thresher.cli import main as cli_main


def _example(name: str, out: Path, **sections: Any) -> Path:
    """The example's config with its run written under `out` (and any section overridden)."""
    cfg = yaml.safe_load((EXAMPLES / name).read_text())
    cfg["run"]["out"] = str(out)
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path = out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _check_run(run_dir: Path) -> dict[str, Any]:
    summary = pq.read_table(run_dir / "stats" / "summary.parquet")
    assert summary.schema.equals(SUMMARY_SCHEMA)
    assert summary.num_rows >= 2 and min(summary.column("fve").to_pylist()) > 0.0
    assert (run_dir / "stats" / "features.parquet").is_file()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "complete"
    return record


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return example_image_folder(tmp_path_factory.mktemp("data") / "images")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["text_minilm.yaml", "text_transformer_lens.yaml",
                                  "eeg_patchtst.yaml"])
def test_example_runs_to_parquet(name: str, tmp_path: Path) -> None:
    config = _example(name, tmp_path)
    assert cli_main(["run", str(config), "--inline", "--no-progress"]) == 0
    run_name = yaml.safe_load(config.read_text())["run"]["name"]
    _check_run(tmp_path / run_name)


@pytest.mark.slow
def test_image_example_runs_with_its_labels(image_folder: Path, tmp_path: Path) -> None:
    config = _example("images_open_clip.yaml", tmp_path,
                      source={**yaml.safe_load((EXAMPLES / "images_open_clip.yaml").read_text())
                              ["source"], "inputs": {"kind": "image_folder",
                                                     "paths": [str(image_folder)]}})
    assert cli_main(["run", str(config), "--inline", "--no-progress"]) == 0
    run_dir = tmp_path / "images-open-clip"
    record = _check_run(run_dir)
    manifest = pq.read_table(run_dir / "inputs" / "s0.parquet").to_pylist()
    assert len(manifest) == 48 and record["harvest"]["unreadable_inputs"] == 0
    assert {r["label_name"] for r in manifest} == {p.name for p in image_folder.iterdir()}


@pytest.mark.slow
def test_stored_example_replays_a_harvest(tmp_path: Path) -> None:
    eeg = _example("eeg_patchtst.yaml", tmp_path)
    assert cli_main(["harvest", str(eeg), "--out", str(tmp_path / "runs" / "eeg-cache")]) == 0
    replay = _example("stored_replay.yaml", tmp_path)  # model: ../runs/eeg-cache from tmp/x
    cfg = yaml.safe_load(replay.read_text())
    cfg["source"]["backbone"]["model"] = str(tmp_path / "runs" / "eeg-cache")
    replay.write_text(yaml.safe_dump(cfg))
    assert cli_main(["run", str(replay), "--inline", "--no-progress"]) == 0
    _check_run(tmp_path / "eeg-replay")


@pytest.mark.slow
def test_synthetic_example_reports_ground_truth(tmp_path: Path) -> None:
    config = _example("synthetic_ground_truth.yaml", tmp_path,  # shrunk to seconds
                      train={"rows": 4096, "d_sae": 256, "checkpoint_every": 8},
                      stream={"holdout_rows": 4096})
    assert cli_main(["run", str(config), "--inline", "--no-progress"]) == 0
    _check_run(tmp_path / "synthetic")
    summary = pq.read_table(tmp_path / "synthetic" / "stats" / "summary.parquet").to_pandas()
    assert len(summary) == 4
    for name in ("gt_mcc", "gt_uniqueness", "gt_f1"):
        assert summary[name].between(0, 1).all() and (summary[name] > 0).all(), name


@pytest.mark.slow
def test_images_on_ray_decode_in_a_cpu_stage_and_count_unreadable(
        ray_session: Any, image_folder: Path, tmp_path: Path) -> None:
    """The one Ray run: CPU decode stage -> backbone actors; same rows as inline."""
    import shutil

    folder = tmp_path / "images"
    shutil.copytree(image_folder, folder)
    (folder / "camera" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    cfg: dict[str, Any] = {
        "run": {"name": "ray-images", "out": str(tmp_path), "seed": 0},
        # A transformers ViT: its actor imports in half the time of open_clip's (open_clip's
        # own rows are checked in-process, tests/modalities/image/test_vision.py).
        "source": {"backbone": {"kind": "hf_vision", "model": "", "config": TINY_VIT},
                   "hook": "layer.1", "inputs": {"kind": "image_folder", "paths": [str(folder)]},
                   "batch_size": 8},
        "stream": {"chunk_rows": 128, "capacity_chunks": 8, "mix_chunks": 2,
                   "holdout_rows": 128, "norm_rows": 128},
        # More rows wanted than 48 images give: every image is harvested (and counted).
        "train": {"batch_size": 64, "rows": 1024, "checkpoint_every": 4, "warmup_steps": 1,
                  "d_sae": 64, "k": 8},
        "sweep": [{"arch": "topk", "k": [4, 8]}],
        "resources": {"harvesters": 1, "trainers": 1, "cpus_per_harvester": 1,
                      "cpus_per_trainer": 0, "harvester_threads": 1, "trainer_threads": 1},
    }
    ray_dir = thresher.run(cfg, progress=False)
    inline_dir = thresher.run({**cfg, "run": {**cfg["run"], "name": "inline-images"}},
                              inline=True, progress=False)
    ray_record, inline_record = _check_run(ray_dir), _check_run(inline_dir)
    for run_dir, record in ((ray_dir, ray_record), (inline_dir, inline_record)):
        assert record["harvest"]["unreadable_inputs"] == 1
        manifest = pq.read_table(run_dir / "inputs" / "s0.parquet").to_pylist()
        [broken] = [row for row in manifest if not row["readable"]]
        assert broken["origin"].endswith("broken.jpg") and len(manifest) == 49
        assert record["streams"]["s0"]["harvest"]["unreadable_named"] == [
            f"{broken['origin']} (example {broken['example_id']})"]
    weights = "saes/00-topk-k4/sae_weights.safetensors"
    assert (ray_dir / weights).read_bytes() == (inline_dir / weights).read_bytes()


@pytest.mark.slow
def test_the_harvest_pool_decodes_ahead_and_hands_back_the_blocks_in_input_order(
        ray_session: Any, image_folder: Path, tmp_path: Path) -> None:
    """The pool the stream actor runs, on images: each batch is decoded by a CPU task whose
    ref the harvester's call takes (a Harvester does not decode: without the task it would get
    file references), at most `in_flight` calls are out at once, and the blocks come back in
    input order, equal to the in-process harvest of the same batches."""
    from thresher.config import load_config
    from thresher.distributed.blocks import load_blocks
    from thresher.distributed.harvest_worker import HarvestPool
    from thresher.harvest.local import LocalHarvest

    cfg = load_config({"source": {
        "backbone": {"kind": "hf_vision", "model": "", "config": TINY_VIT},
        "hook": "layer.0", "tokens": "cls", "batch_size": 8,
        "inputs": {"kind": "image_folder", "paths": [str(image_folder)]}},
        "resources": {"harvester_threads": 1}})
    local = LocalHarvest(cfg, cfg.source)
    assert local.inputs.decode is not None and len(local.inputs.batches) > 3
    pool = HarvestPool(cfg.source, actors=2, in_flight=3, gpus=0.0, threads=1,
                       base_dir=str(tmp_path), options={"num_cpus": 0})
    outputs = []
    for out in pool.harvest(local.inputs.batches, decode=local.inputs.decode):
        assert len(pool.out) <= 3 - 1  # the one just handed back was among the three out
        outputs.append(out)
    pool.stop()
    blocks = load_blocks([out.block for out in outputs])
    expected = [item.block for item in local]
    assert [len(b) for b in blocks] == [len(b) for b in expected]
    assert [out.report.rows for out in outputs] == [len(b) for b in expected]
    for got, want in zip(blocks, expected, strict=True):
        assert (got.example_id == want.example_id).all()
        assert abs(got.float32() - want.float32()).max() < 1e-5
