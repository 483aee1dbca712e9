"""The dinov2 kind: a DINOv2 ViT (with registers or without) built from its config with random
weights; its rows against the model's own hidden states computed directly with transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import (
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
)

import thresher
from tests.image_data import write_images
from thresher.config import ConfigError, SourceConfig, load_config
from thresher.harvest.harvester import Harvester
from thresher.harvest.inputs import decode_batch, prepare_inputs
from thresher.modalities.image.kind import rows_per_image
from thresher.modalities.model_tools import seeded

# 28 px, 14 px patches: a 2 x 2 grid; with 4 registers a layer has 1 + 4 + 4 tokens.
TINY: dict[str, Any] = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                        "intermediate_size": 64, "image_size": 28, "patch_size": 14}
REGISTERS = {**TINY, "num_register_tokens": 4}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_images(tmp_path_factory.mktemp("images"))


def _source(root: Path, config: dict[str, Any], hook: str = "layer.1",
            tokens: str = "all") -> SourceConfig:
    return load_config({"source": {
        "backbone": {"kind": "dinov2", "model": "", "config": config}, "hook": hook,
        "tokens": tokens, "batch_size": 4,
        "inputs": {"kind": "image_folder", "paths": [str(root)]}}}).source


def _reference(config: dict[str, Any], pixels: np.ndarray) -> Any:
    """The same model built by transformers directly (same seed, so the same weights)."""
    registers = config.get("num_register_tokens", 0)
    model_class = Dinov2WithRegistersModel if registers else Dinov2Model
    config_class = Dinov2WithRegistersConfig if registers else Dinov2Config
    with seeded():
        model = model_class(config_class(**config)).eval()
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(pixels), output_hidden_states=True)


def _first_batch(source: SourceConfig, base: Path) -> tuple[Harvester, Any]:
    inputs = prepare_inputs(source, 0, base)
    batch = decode_batch(inputs, inputs.batches[0])
    return Harvester(source), batch


@pytest.mark.parametrize("config", [TINY, REGISTERS], ids=["no-registers", "registers"])
@pytest.mark.parametrize("tokens", ["all", "cls", "patches"])
def test_layer_rows_are_the_models_hidden_states(image_root: Path, config: dict[str, Any],
                                                 tokens: str) -> None:
    source = _source(image_root, config, tokens=tokens)
    harvester, batch = _first_batch(source, image_root)
    block = harvester.harvest(batch)
    real = batch.example_id >= 0
    out = _reference(config, batch.pixels[real])
    states = out.hidden_states[2]  # block 1's output: hidden_states[N + 1]
    n_prefix = 1 + config.get("num_register_tokens", 0)
    assert states.shape[1] == n_prefix + 4  # CLS, registers, the 2 x 2 patches
    keep = {"all": slice(None), "cls": slice(0, 1), "patches": slice(n_prefix, None)}[tokens]
    expected = states[:, keep].reshape(-1, states.shape[-1]).numpy()
    np.testing.assert_allclose(block.acts, expected, rtol=1e-5, atol=1e-5)
    per_image = expected.shape[0] // int(real.sum())
    assert rows_per_image(source) == per_image  # the plan's count is the model's
    assert harvester.backbone.hook_widths == (32,)
    positions = {"all": np.arange(n_prefix + 4), "cls": np.arange(1),
                 "patches": np.arange(n_prefix, n_prefix + 4)}[tokens]
    np.testing.assert_array_equal(block.position[:per_image], positions)


def test_embedding_is_the_pooled_cls_and_hooks_sit_side_by_side(image_root: Path) -> None:
    harvester, batch = _first_batch(_source(image_root, REGISTERS, hook="embedding"),
                                    image_root)
    block = harvester.harvest(batch)
    real = batch.example_id >= 0
    out = _reference(REGISTERS, batch.pixels[real])
    np.testing.assert_allclose(block.acts, out.pooler_output.numpy(), rtol=1e-5, atol=1e-5)
    two = Harvester(_source(image_root, REGISTERS, hook=("layer.0", "layer.1")))
    assert two.backbone.hook_widths == (32, 32)
    both = two.harvest(batch)
    np.testing.assert_allclose(both.acts[:, 32:], out.hidden_states[2].reshape(-1, 32).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_preprocessing_is_dinov2s_crop_and_imagenet_normalisation(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "grey" / "a"
    root.mkdir(parents=True)
    Image.new("RGB", (60, 40), (128, 128, 128)).save(root / "0.png")
    source = _source(tmp_path / "grey", TINY)
    inputs = prepare_inputs(source, 0, tmp_path)
    pixels = decode_batch(inputs, inputs.batches[0]).pixels[0]
    assert pixels.shape == (3, 28, 28)  # the centre crop of image_size
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(pixels[:, 14, 14], (128 / 255 - mean) / std, atol=1e-2)


def test_bad_dinov2_configs_say_what_to_do(image_root: Path) -> None:
    with pytest.raises(ConfigError, match=r"layer.5.*valid hooks: embedding, layer.0"):
        Harvester(_source(image_root, TINY, hook="layer.5"))
    source = load_config({"source": {
        "backbone": {"kind": "dinov2", "model": "/no/such"}, "hook": "layer.0",
        "inputs": {"kind": "image_folder", "paths": [str(image_root)]}}}).source
    with pytest.raises(ConfigError, match=r"'/no/such' is not a local folder; dinov2 loads"):
        Harvester(source)


def test_a_run_through_dinov2(tmp_path: Path, image_root: Path) -> None:
    cfg = {
        "run": {"name": "dinov2", "out": str(tmp_path / "runs"), "seed": 0},
        "source": {"backbone": {"kind": "dinov2", "model": "", "config": REGISTERS},
                   "hook": "layer.1", "tokens": "patches", "batch_size": 2,
                   "inputs": {"kind": "image_folder", "paths": [str(image_root)]}},
        "stream": {"chunk_rows": 8, "capacity_chunks": 4, "mix_chunks": 2, "holdout_rows": 8,
                   "norm_rows": 8},
        "train": {"batch_size": 4, "rows": 8, "checkpoint_every": 2, "warmup_steps": 1,
                  "d_sae": 16, "k": 4, "lr": 1e-3},
        "resources": {"harvesters": 1, "trainers": 1, "cpus_per_harvester": 1,
                      "cpus_per_trainer": 0},
    }
    run_dir = Path(thresher.run(cfg, inline=True, progress=False))
    summary = pq.read_table(run_dir / "stats" / "summary.parquet").to_pylist()
    assert [(row["backbone"], row["hook"], row["d_in"]) for row in summary] == [
        ("dinov2", "layer.1", 32)]
    assert summary[0]["rows_trained"] == 8
