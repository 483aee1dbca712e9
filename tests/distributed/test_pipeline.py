"""End to end: the Ray pipeline and the inline executor on MiniLM over stdlib docstrings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file

import thresher
from tests.run_configs import smoke_config
from thresher.analysis.parquet import (
    CURVES_SCHEMA,
    FEATURES_SCHEMA,
    SUMMARY_SCHEMA,
)
from thresher.config import expand_sweep, load_config
from thresher.modalities.text.kind import load_tokenizer
from thresher.modalities.text.windows import TEXT_MANIFEST_SCHEMA, build_inputs
from thresher.rundir import RunDirError


@pytest.fixture(scope="module")
def ray_run(ray_session: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ray")
    return thresher.run(smoke_config(out), progress=False)


@pytest.fixture(scope="module")
def inline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("inline")
    return thresher.run(smoke_config(out), inline=True, progress=False)


def run_json(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text())


def test_smoke_run_writes_every_file(ray_run: Path) -> None:
    record = run_json(ray_run)
    assert record["format_version"] == 1 and record["status"] == "complete"
    assert record["executor"] == "ray"
    saes = expand_sweep(load_config(smoke_config(ray_run.parent)))
    for sae in saes:
        sae_dir = ray_run / "saes" / sae.sae_id
        cfg = json.loads((sae_dir / "cfg.json").read_text())
        assert cfg["d_sae"] == sae.d_sae and cfg["d_in"] == 384
        weights = load_file(sae_dir / "sae_weights.safetensors")
        assert weights["W_enc"].shape == (384, sae.d_sae)
        assert weights["W_dec"].shape == (sae.d_sae, 384)
        assert (sae_dir / "checkpoint" / "state.json").is_file()

    summary = pq.read_table(ray_run / "stats" / "summary.parquet")
    assert summary.schema.equals(SUMMARY_SCHEMA)
    assert sorted(summary.column("sae_id").to_pylist()) == sorted(s.sae_id for s in saes)
    rows = summary.to_pylist()
    for row in rows:
        assert row["rows_trained"] == 8192 and row["steps"] == 32
        assert row["eval_rows"] >= 2048
        assert 0.0 < row["fve"] < 1.0
        assert row["l0"] > 0
    topk = {r["k"]: r for r in rows if r["arch"] == "topk"}
    assert topk[8]["l0"] <= 8 + 1e-9 and topk[16]["l0"] <= 16 + 1e-9

    features = pq.read_table(ray_run / "stats" / "features.parquet")
    assert features.schema.equals(FEATURES_SCHEMA)
    assert features.num_rows == sum(s.d_sae for s in saes)
    # dead fraction in the summary is the share of features that never fired
    by_sae = features.to_pandas().groupby("sae_id")["is_dead"].mean()
    for row in rows:
        assert row["dead_fraction"] == pytest.approx(by_sae[row["sae_id"]])

    curves = pq.read_table(ray_run / "stats" / "curves.parquet")  # from the Ray trainers
    assert curves.schema.equals(CURVES_SCHEMA)
    assert sorted(set(curves.column("sae_id").to_pylist())) == sorted(s.sae_id for s in saes)

    manifest = pq.read_table(ray_run / "inputs" / "s0.parquet")
    assert manifest.schema.equals(TEXT_MANIFEST_SCHEMA)
    assert manifest.num_rows >= record["harvest"]["examples"] > 0
    assert manifest.column("example_id").to_pylist() == list(range(manifest.num_rows))


@pytest.mark.slow
def test_one_harvest_feeds_every_trainer_identically(ray_run: Path,
                                                     ray_session: Any,
                                                     tmp_path: Path) -> None:
    record = run_json(ray_run)
    digests = {t: info["batch_digest"] for t, info in record["trainers"].items()}
    assert len(digests) == 2 and len(set(digests.values())) == 1
    # The same stream with one SAE on one trainer: the same forward calls, the same batches.
    single = thresher.run(smoke_config(tmp_path, sweep=[{"arch": "topk", "k": 8}],
                                       resources={"trainers": 1}), progress=False)
    one = run_json(single)
    assert one["harvest"]["forward_calls"] == record["harvest"]["forward_calls"]
    assert one["harvest"]["rows"] == record["harvest"]["rows"]
    (digest,) = {info["batch_digest"] for info in one["trainers"].values()}
    assert digest == next(iter(digests.values()))
    # One forward call per input batch: the harvest consumed the first N input batches, in
    # order, each from exactly one forward call, whatever the number of SAEs and trainers.
    harvest = record["harvest"]
    cfg = load_config(smoke_config(tmp_path))
    inputs = build_inputs(cfg.source, cfg.run.seed, tmp_path,
                          load_tokenizer(cfg.source.backbone))
    first = inputs.batches[: harvest["forward_calls"]]
    assert harvest["examples"] == sum(int((b.example_id >= 0).sum()) for b in first)
    assert harvest["rows"] == sum(int((b.lengths - b.n_prefix - b.n_suffix).clip(0)
                                      .sum()) for b in first)


def test_log_stays_within_capacity(ray_run: Path) -> None:
    log = run_json(ray_run)["log"]
    assert 0 < log["peak_held"] <= log["capacity"]
    assert log["released"] == log["appended"]


def test_inline_and_ray_give_the_same_weights(ray_run: Path, inline_run: Path) -> None:
    assert run_json(inline_run)["executor"] == "inline"
    for sae_dir in sorted((ray_run / "saes").iterdir()):
        a = load_file(sae_dir / "sae_weights.safetensors")
        b = load_file(inline_run / "saes" / sae_dir.name / "sae_weights.safetensors")
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{sae_dir.name}/{name}")
    ray_digest = {i["batch_digest"] for i in run_json(ray_run)["trainers"].values()}
    inline_digest = {i["batch_digest"] for i in run_json(inline_run)["trainers"].values()}
    assert ray_digest == inline_digest


def test_run_json_counts_the_copies_of_a_row(ray_run: Path, inline_run: Path) -> None:
    """On the trainer's side a row is copied once, by the gather into its group's order:
    batches of whole groups need no joining, and float32 CPU batches become tensors in place.
    These are counted as rows are copied. The harvest side's figure (the object store's write)
    is a constant the harvest worker declares, not a count, so it is not checked here;
    tests/distributed/test_object_store_bytes.py measures the object store's bytes per row
    instead."""
    for run in (ray_run, inline_run):
        for trainer in run_json(run)["trainers"].values():
            copies = trainer["copies_per_row"]
            assert (copies["gather"], copies["batch"], copies["tensor"]) == (1.0, 0.0, 0.0)


def key_paths(value: Any, at: str = "") -> set[str]:
    """Every key path of a JSON value ('a.b', lists as 'a[]'), values left out."""
    if isinstance(value, dict):
        return {path for key, item in value.items()
                for path in {f"{at}.{key}", *key_paths(item, f"{at}.{key}")}}
    if isinstance(value, list):
        return {path for item in value for path in key_paths(item, f"{at}[]")}
    return set()


def test_run_json_has_the_same_keys_under_both_executors(ray_run: Path,
                                                         inline_run: Path) -> None:
    """One typed outcome per stream and per trainer: the executors differ in values (node ids,
    the object store, the pump's cost), never in what run.json says."""
    ray, inline = run_json(ray_run), run_json(inline_run)
    assert (ray["executor"], inline["executor"]) == ("ray", "inline")
    assert key_paths(ray) - key_paths(inline) == set()
    assert key_paths(inline) - key_paths(ray) == set()
    for trainer in inline["trainers"].values():  # nothing restarted inline: said as zero
        assert (trainer["restarts"], trainer["restart_log"], trainer["steps_lost"]) == (0, [], 0)
    assert key_paths({"a": [{"b": 1}], "c": 2}) == {".a", ".a[].b", ".c"}


def test_an_existing_run_needs_resume_or_overwrite(inline_run: Path) -> None:
    cfg = smoke_config(inline_run.parent)
    before = load_file(next((inline_run / "saes").iterdir()) / "sae_weights.safetensors")
    with pytest.raises(RunDirError, match=r"--resume to continue it.*--overwrite"):
        thresher.run(cfg, inline=True, progress=False)
    # resuming a finished run restores every SAE at its last step: nothing more to train
    resumed = thresher.resume(inline_run, inline=True, progress=False)
    record = run_json(resumed)
    assert record["status"] == "complete"
    assert all(info["batches"] == 0 for info in record["trainers"].values())
    after = load_file(next((resumed / "saes").iterdir()) / "sae_weights.safetensors")
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])
