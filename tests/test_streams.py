"""Several hooks from one forward, several streams in one run: config, plan, rows and runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from safetensors.numpy import load_file

import thresher
from tests.eeg_data import eeg_source
from tests.image_data import image_source, write_images
from tests.run_configs import smoke_config
from tests.text_data import source_of
from tests.tiny_models import TINY_BERT, TINY_GPT2, TINY_PATCHTST, TINY_TL
from thresher.config import ConfigError, SourceConfig, load_config, make_plan
from thresher.harvest.collect import collect_stream
from thresher.harvest.harvester import Harvester
from thresher.harvest.inputs import decode_batch, prepare_inputs
from thresher.stream.block import ActivationBlock
from thresher.stream.stats import estimate_stream_stats

# --------------------------------------------------------------------------------------------
# Config and plan
# --------------------------------------------------------------------------------------------

# A causal LM beside the MiniLM encoder: a second backbone and a CE-loss splice. (A transformers
# GPT-2, not TransformerLens: each Ray run imports it in a fresh actor, in a third of the time.)
# It runs in bf16, so its rows travel as bf16.
GPT2_SOURCE: dict[str, Any] = {
    "name": "gpt2",
    "backbone": {"kind": "hf_text", "model": "", "config": {**TINY_GPT2, "n_positions": 64},
                 "dtype": "bfloat16"},
    "hook": "layer.1",
    "inputs": {"kind": "python_docstrings", "context": 64, "max_tokens": 14000},
    "batch_size": 32,
}


def two_stream_config(out: Path, **overrides: Any) -> dict[str, Any]:
    """MiniLM at two layers (one forward) and a random GPT-2: two streams."""
    cfg = smoke_config(out, **{"train": {"rows": 4096}, **overrides})
    minilm = {**cfg.pop("source"), "name": "minilm", "hook": ["layer.1", "layer.3"]}
    # Enough tokens for the held-out rows and the 4096 training rows, no more.
    short = {"kind": "python_docstrings", "context": 64, "max_tokens": 7000}
    cfg["sources"] = [{**minilm, "inputs": short}, {**GPT2_SOURCE, "inputs": short}]
    cfg["sweep"] = [{"arch": "topk", "k": [8, 16]},
                    {"arch": "relu", "l1_coef": 1.0, "stream": "minilm", "hook": "layer.3"}]
    return cfg


def test_plan_crosses_the_sweep_with_streams_and_hooks(tmp_path: Path) -> None:
    plan = make_plan(load_config(two_stream_config(tmp_path)))
    assert [s.stream_id for s in plan.streams] == ["minilm", "gpt2"]
    assert plan.streams[0].hooks == ("layer.1", "layer.3")
    ids = [sae.sae_id for stream in plan.streams for sae in stream.saes]
    assert len(ids) == len(set(ids)) == 2 * 2 + 1 + 2  # topk at 3 (stream, hook)s, relu at one
    by_target: dict[tuple[str, str], list[str]] = {}
    for stream in plan.streams:
        for trainer in stream.trainers:
            for sae in trainer.saes:
                assert (sae.stream_id, sae.hook) == (stream.stream_id, trainer.hook)
                by_target.setdefault((sae.stream_id, sae.hook), []).append(sae.arch)
    assert sorted(by_target) == [("gpt2", "layer.1"), ("minilm", "layer.1"),
                                 ("minilm", "layer.3")]
    assert sorted(by_target[("minilm", "layer.3")]) == ["relu", "topk", "topk"]
    assert by_target[("minilm", "layer.1")] == ["topk", "topk"]
    # Every hook with SAEs gets a trainer of its own; trainer ids are unique over the run.
    assert [len(s.trainers) for s in plan.streams] == [2, 2]
    assert len({t.trainer_id for t in plan.trainers}) == 4
    text = plan.describe()
    assert "stream minilm: hf_text minilm @ layer.1, layer.3" in text
    assert "1 pass for 2 hook(s)" in text


def test_a_source_may_size_its_own_harvest(tmp_path: Path) -> None:
    from thresher.config import harvest_resources
    from thresher.distributed.pipeline import concurrent_streams

    cfg = two_stream_config(tmp_path, resources={"gpus_per_harvester": 0.25,
                                                 "gpus_per_trainer": 0.25, "trainers": 1})
    cfg["sources"][1].update(harvesters=2, gpus_per_harvester=1)
    loaded = load_config(cfg)
    minilm, gpt2 = (harvest_resources(loaded, s) for s in loaded.sources)
    assert (minilm.harvesters, minilm.cpus_per_harvester, minilm.gpus_per_harvester) == (
        1, 1.0, 0.25)
    assert (gpt2.harvesters, gpt2.cpus_per_harvester, gpt2.gpus_per_harvester) == (2, 1.0, 1)
    text = make_plan(loaded).describe()
    assert "1 harvester actor(s) x 1 CPU, 0.25 GPU" in text
    assert "2 harvester actor(s) x 1 CPU, 1 GPU" in text
    # streams at once: sized by the hungriest stream (2 GPUs of harvest + 0.25 per trainer)
    assert concurrent_streams(loaded, {"CPU": 64, "GPU": 4.5}) == 2
    assert concurrent_streams(loaded, {"CPU": 64, "GPU": 4.0}) == 1
    path = tmp_path / "bad.yaml"
    cfg["sources"][1]["gpus_per_harvester"] = 1.5
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(ConfigError, match=r"`sources\.1\.gpus_per_harvester` \(.*bad\.yaml:\d+\) "
                       r"is 1\.5: use 0, a fraction below 1"):
        load_config(path)


def test_stream_and_hook_errors_name_the_key(tmp_path: Path) -> None:
    cfg = two_stream_config(tmp_path)
    both = dict(cfg, source=cfg["sources"][0])
    with pytest.raises(ConfigError, match=r"give `source`.*or `sources`.*not both"):
        load_config(both)
    twice = dict(cfg, sources=[cfg["sources"][0], {**GPT2_SOURCE, "name": "minilm"}])
    with pytest.raises(ConfigError, match=r"`sources\.1\.name`.*must be unique"):
        load_config(twice)
    bad_pin = dict(cfg, sweep=[{"arch": "topk", "stream": "gpt"}])
    with pytest.raises(ConfigError, match=r"`sweep\.0\.stream` is 'gpt'.*streams: minilm, gpt2"):
        load_config(bad_pin)
    bad_hook = dict(cfg, sweep=[{"arch": "topk", "hook": "layer.9"}])
    with pytest.raises(ConfigError, match=r"`sweep\.0\.hook` is 'layer\.9'.*hooks: "):
        load_config(bad_hook)
    one = smoke_config(tmp_path)
    one["source"]["hook"] = ["layer.1", "layer.1"]
    with pytest.raises(ConfigError, match=r"`source\.hook` lists a hook twice"):
        load_config(one)
    with pytest.raises(ConfigError, match="this step takes one"):
        _ = load_config(cfg).source


# --------------------------------------------------------------------------------------------
# Several hooks, one forward: each hook's rows equal a single-hook harvest's
# --------------------------------------------------------------------------------------------


def _harvest(source: SourceConfig, base: Path) -> tuple[ActivationBlock, int]:
    inputs = prepare_inputs(source, 0, base)
    harvester = Harvester(source, base_dir=base)
    blocks = [harvester.harvest(decode_batch(inputs, b)) for b in inputs.batches[:2]]
    return ActivationBlock.concat(blocks), harvester.forward_calls


def _check_hooks_match(source: SourceConfig, hooks: list[str], base: Path) -> None:
    multi, calls = _harvest(dataclasses.replace(source, hook=tuple(hooks)), base)
    assert calls == 2  # one forward per input batch for every hook together
    assert [name for name, _ in multi.hook_layout] == hooks
    for hook in hooks:
        single, _ = _harvest(dataclasses.replace(source, hook=hook), base)
        part = multi.select(hook)
        np.testing.assert_array_equal(part.example_id, single.example_id)
        np.testing.assert_array_equal(part.position, single.position)
        np.testing.assert_allclose(part.acts, single.acts, rtol=1e-5, atol=1e-5, err_msg=hook)


def test_hf_text_hooks_from_one_forward(tmp_path: Path) -> None:
    source = source_of(tmp_path, {"kind": "hf_text", "model": "", "config": TINY_BERT}, "layer.0")
    _check_hooks_match(source, ["layer.2", "embeddings", "layer.0"], tmp_path)


def test_transformer_lens_hooks_from_one_forward(tmp_path: Path) -> None:
    source = source_of(tmp_path, {"kind": "transformer_lens", "model": "", "config": TINY_TL},
                       "hook_embed")
    _check_hooks_match(source, ["blocks.0.attn.hook_z", "blocks.1.hook_resid_post",
                                "hook_embed", "blocks.0.mlp.hook_post"], tmp_path)


@pytest.mark.parametrize("kind", ["open_clip", "hf_vision"])
def test_vision_hooks_from_one_forward(kind: str, tmp_path: Path) -> None:
    root = write_images(tmp_path / "images")
    source = image_source(kind, "layer.0", tokens="patches", paths=(str(root),))
    _check_hooks_match(source, ["layer.1", "layer.0"], tmp_path)
    with pytest.raises(ConfigError, match="'embedding' gives one row per image"):
        load_config({"source": {"backbone": {"kind": kind, "model": "x"},
                                "hook": ["embedding", "layer.0"],
                                "inputs": {"kind": "image_folder", "paths": [str(root)]}}})


def test_patchtst_hooks_from_one_forward(tmp_path: Path) -> None:
    source = eeg_source("layer.0", config=TINY_PATCHTST)
    _check_hooks_match(source, ["embeddings", "layer.2", "layer.0"], tmp_path)


def test_block_columns_carry_each_hook_on_its_own() -> None:
    rng = np.random.default_rng(0)
    block = ActivationBlock(acts=rng.normal(size=(5, 7)).astype(np.float32),
                            example_id=np.arange(5), position=np.zeros(5, np.int32),
                            hook_layout=(("a", 3), ("b", 4)))
    cols = block.to_columns()
    assert sorted(cols) == ["acts:a", "acts:b", "example_id", "position"]
    only_b = ActivationBlock.from_columns(cols, hooks=["b"])
    np.testing.assert_array_equal(only_b.acts, block.acts[:, 3:])
    assert only_b.hook_layout == (("b", 4),)
    both = ActivationBlock.from_columns(cols)
    np.testing.assert_array_equal(both.acts, block.acts)
    assert both.hook_layout == block.hook_layout
    with pytest.raises(KeyError, match=r"hooks \[.c.\] are not in these columns"):
        ActivationBlock.from_columns(cols, hooks=["c"])
    with pytest.raises(ValueError, match="do not add up"):
        ActivationBlock(acts=block.acts, example_id=block.example_id,
                        position=block.position, hook_layout=(("a", 3),))


# --------------------------------------------------------------------------------------------
# Runs: two streams, one of them with two hooks, on Ray and inline
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(ray_session: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("streams")
    queued = two_stream_config(out / "ray-queued", resources={"concurrent_streams": 1})
    queued["sources"][1]["cpus_per_harvester"] = 0.5  # its own harvest resources
    together = two_stream_config(out / "ray-together",
                                 resources={"concurrent_streams": 2, "cpus_per_harvester": 0.5})
    return {"queued": thresher.run(queued, progress=False),
            "together": thresher.run(together, progress=False),
            "inline": thresher.run(two_stream_config(out / "inline"), inline=True,
                                   progress=False)}


@pytest.mark.slow
def test_streams_run_queued_or_together(runs: dict[str, Path]) -> None:
    # Who was running when each stream started, as the driver admitted them: an ordering fact
    # (the harvests' clock times may or may not overlap, as the scheduler has it).
    queued = json.loads((runs["queued"] / "run.json").read_text())["streams"]
    assert [queued[s]["started_beside"] for s in ("minilm", "gpt2")] == [[], []]
    together = json.loads((runs["together"] / "run.json").read_text())["streams"]
    assert [together[s]["started_beside"] for s in ("minilm", "gpt2")] == [[], ["minilm"]]
    # One stream at a time: the second harvest began after the first had ended.
    assert queued["minilm"]["harvest"]["finished_at"] <= queued["gpt2"]["harvest"]["started_at"]
    assert queued["minilm"]["harvest"]["cpus_per_harvester"] == 1.0  # from `resources`
    assert queued["gpt2"]["harvest"]["cpus_per_harvester"] == 0.5  # the source's own


@pytest.mark.slow
def test_each_hook_trains_on_its_own_rows_from_one_harvest(runs: dict[str, Path],
                                                           tmp_path: Path) -> None:
    run_dir = runs["queued"]
    record = json.loads((run_dir / "run.json").read_text())
    cfg = load_config(two_stream_config(tmp_path))
    inputs = prepare_inputs(cfg.source_named("minilm"), cfg.run.seed, tmp_path)
    harvest = record["streams"]["minilm"]["harvest"]
    assert harvest["forward_calls"] == harvest["blocks"] <= len(inputs.batches)  # both hooks
    summary = pq.read_table(run_dir / "stats" / "summary.parquet").to_pylist()
    assert len(summary) == 7
    holdout, train = collect_stream(cfg, "minilm")
    for row in summary:
        if row["stream_id"] != "minilm":
            assert (row["hook"], row["d_in"], row["backbone"]) == (
                "layer.1", TINY_GPT2["n_embd"], "hf_text")
            continue
        # The SAE of a hook used that hook's own input scale, estimated from its rows.
        assert row["d_in"] == 384
        scale = record["streams"]["minilm"]["stream_stats"][row["hook"]]["scale"]
        assert row["input_scale"] == pytest.approx(scale)
        first = train.select(row["hook"]).float32()[: cfg.stream.norm_rows]
        assert scale == pytest.approx(estimate_stream_stats(first).scale, rel=1e-6)
        assert row["eval_rows"] == len(holdout)
        sae_cfg = json.loads((run_dir / "saes" / row["sae_id"] / "cfg.json").read_text())
        assert sae_cfg["hook_name"] == row["hook"]
    scales = record["streams"]["minilm"]["stream_stats"]
    assert scales["layer.1"]["scale"] != pytest.approx(scales["layer.3"]["scale"], rel=1e-3)


@pytest.mark.slow
def test_rows_reach_the_object_store_in_the_backbone_s_dtype(runs: dict[str, Path]) -> None:
    """Each hook's activations once, beside 8 + 4 bytes of example id and position: float32
    for MiniLM's two hooks, bf16 (and its 1-byte flag column) for the bf16 GPT-2."""
    streams = json.loads((runs["queued"] / "run.json").read_text())["streams"]
    assert streams["minilm"]["harvest"]["object_store_bytes_per_row"] == 2 * 384 * 4 + 12
    gpt2 = TINY_GPT2["n_embd"] * 2 + 12 + 1
    assert streams["gpt2"]["harvest"]["object_store_bytes_per_row"] == gpt2
    # The store's write, and for MiniLM a contiguous column per hook first.
    assert streams["minilm"]["harvest"]["copies_per_row"] == 2.0
    assert streams["gpt2"]["harvest"]["copies_per_row"] == 1.0


@pytest.mark.slow
def test_ray_and_inline_agree_on_every_stream(runs: dict[str, Path]) -> None:
    for ray_dir in (runs["queued"], runs["together"]):
        for sae_dir in sorted((ray_dir / "saes").iterdir()):
            a = load_file(sae_dir / "sae_weights.safetensors")
            b = load_file(runs["inline"] / "saes" / sae_dir.name / "sae_weights.safetensors")
            for name in a:
                np.testing.assert_array_equal(a[name], b[name], err_msg=f"{sae_dir.name} {name}")


@pytest.mark.slow
def test_each_stream_writes_its_manifest_and_analyze_recomputes_every_sae(
        runs: dict[str, Path]) -> None:
    from thresher.analysis.analyze import analyze_run

    run_dir = runs["inline"]
    for stream_id, column in (("minilm", "token_ids"), ("gpt2", "token_ids")):
        manifest = pq.read_table(run_dir / "inputs" / f"{stream_id}.parquet")
        assert column in manifest.column_names and manifest.num_rows > 0
    before = {r["sae_id"]: r for r in
              pq.read_table(run_dir / "stats" / "summary.parquet").to_pylist()}
    analyze_run(run_dir, lm_metrics=True, lm_windows=8)
    after = {r["sae_id"]: r for r in
             pq.read_table(run_dir / "stats" / "summary.parquet").to_pylist()}
    assert sorted(after) == sorted(before)
    for sae_id, row in after.items():
        for key in ("stream_id", "hook", "eval_rows"):
            assert row[key] == before[sae_id][key], (sae_id, key)
        for key in ("fve", "l0", "dead_fraction"):
            assert row[key] == pytest.approx(before[sae_id][key], rel=1e-5, abs=1e-9), key
        if row["stream_id"] == "gpt2":  # spliced back in at its hook: CE-loss recovered
            assert np.isfinite(row["ce_loss_recovered"]), sae_id
