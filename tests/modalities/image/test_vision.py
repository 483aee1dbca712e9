"""Vision sources: rows equal the model's own intermediates; inputs, decoding, skipping, labels."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.image_data import image_source, write_images
from tests.tiny_models import TINY_CLIP, TINY_SIGLIP, TINY_VIT
from thresher.config import ConfigError
from thresher.harvest.harvester import Harvester
from thresher.harvest.inputs import decode_batch, prepare_inputs
from thresher.modalities.image.decode import ImageBatch


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_images(tmp_path_factory.mktemp("images"))


def _pixels(n: int = 3, size: int = 32) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).normal(size=(n, 3, size, size))
                            .astype(np.float32))


def _harvest_pixels(harvester: Harvester, pixels: torch.Tensor) -> Any:
    n = len(pixels)
    return harvester.harvest(ImageBatch(pixels=pixels.numpy(), example_id=np.arange(n),
                                        label=np.arange(n) + 10,
                                        unreadable_example_id=np.full(n, -1)))


@pytest.mark.parametrize("tokens", ["all", "cls", "patches"])
def test_open_clip_layer_rows_equal_forward_intermediates(tokens: str) -> None:
    harvester = Harvester(image_source("open_clip", "layer.0", tokens))
    pixels = _pixels()
    block = _harvest_pixels(harvester, pixels)
    visual = harvester.backbone.visual
    ref = visual.forward_intermediates(pixels, indices=[0], output_fmt="NLC",
                                       output_extra_tokens=True, intermediates_only=True)
    full = torch.cat([ref["image_intermediates_prefix"][0], ref["image_intermediates"][0]], 1)
    keep = {"all": slice(0, 17), "cls": slice(0, 1), "patches": slice(1, 17)}[tokens]
    expected = full[:, keep].reshape(-1, full.shape[-1]).detach().numpy()
    np.testing.assert_allclose(block.acts, expected, rtol=1e-5, atol=1e-5)
    per_image = expected.shape[0] // 3
    assert block.example_id.tolist() == np.repeat([0, 1, 2], per_image).tolist()
    assert block.label.tolist() == np.repeat([10, 11, 12], per_image).tolist()
    assert block.position[:per_image].tolist() == list(range(17))[keep]


def test_open_clip_embedding_is_encode_image() -> None:
    harvester = Harvester(image_source("open_clip", "embedding"))
    pixels = _pixels()
    block = _harvest_pixels(harvester, pixels)
    expected = harvester.backbone.clip.encode_image(pixels).detach().numpy()
    np.testing.assert_allclose(block.acts, expected, rtol=1e-5, atol=1e-5)
    assert block.position.tolist() == [0, 0, 0] and block.d == 32


@pytest.mark.slow
def test_open_clip_siglip2_timm_trunk() -> None:
    """ViT-B-16-SigLIP2 (timm trunk, no CLS token) as shipped, random weights, one image."""
    source = image_source("open_clip", "layer.0", "patches", config={}, model="ViT-B-16-SigLIP2",
                          batch_size=1)
    harvester = Harvester(source)
    assert harvester.backbone.n_prefix == 0
    pixels = _pixels(1, 224)
    block = _harvest_pixels(harvester, pixels)
    ref = harvester.backbone.visual.trunk.forward_intermediates(
        pixels, indices=[0], output_fmt="NLC", intermediates_only=True)[0]
    np.testing.assert_allclose(block.acts, ref[0].detach().numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="no CLS token"):
        Harvester(image_source("open_clip", "layer.0", "cls", config={},
                               model="ViT-B-16-SigLIP2"))


@pytest.mark.parametrize(("config", "tokens"), [(TINY_VIT, "cls"), (TINY_VIT, "all"),
                                                (TINY_SIGLIP, "patches")])
def test_hf_vision_layer_rows_equal_hidden_states(config: dict[str, Any], tokens: str) -> None:
    harvester = Harvester(image_source("hf_vision", "layer.1", tokens, config=config))
    pixels = _pixels()
    block = _harvest_pixels(harvester, pixels)
    out = harvester.backbone.model(pixel_values=pixels, output_hidden_states=True)
    hidden = out.hidden_states[2]  # embeddings first: layer 1's output is entry 2
    n_prefix = harvester.backbone.n_prefix
    keep = {"all": slice(None), "cls": slice(0, 1), "patches": slice(n_prefix, None)}[tokens]
    expected = hidden[:, keep].reshape(-1, hidden.shape[-1]).detach().numpy()
    np.testing.assert_allclose(block.acts, expected, rtol=1e-5, atol=1e-5)


def test_hf_vision_embedding() -> None:
    pixels = _pixels()
    vit = Harvester(image_source("hf_vision", "embedding", config=TINY_VIT))
    out = vit.backbone.model(pixel_values=pixels)
    np.testing.assert_allclose(_harvest_pixels(vit, pixels).acts,
                               out.last_hidden_state[:, 0].detach().numpy(), atol=1e-5)
    siglip = Harvester(image_source("hf_vision", "embedding", config=TINY_SIGLIP))
    out = siglip.backbone.model(pixel_values=pixels)
    np.testing.assert_allclose(_harvest_pixels(siglip, pixels).acts,
                               out.pooler_output.detach().numpy(), atol=1e-5)


def test_decode_uses_open_clips_own_transform(image_root: Path) -> None:
    import open_clip
    from PIL import Image

    source = image_source("open_clip", "layer.0", paths=(str(image_root),))
    inputs = prepare_inputs(source, 0, image_root)
    decoded = decode_batch(inputs, inputs.batches[0])
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None,
                                                             **TINY_CLIP)
    first = inputs.manifest.column("origin")[0].as_py()
    expected = preprocess(Image.open(first)).numpy()
    np.testing.assert_allclose(decoded.pixels[0], expected, atol=1e-6)
    assert decoded.pixels.shape == (4, 3, 32, 32)


def test_image_folder_labels_and_corrupt_images_skipped(tmp_path: Path) -> None:
    root = write_images(tmp_path / "imgs")
    (root / "cat" / "broken.png").write_bytes(b"not an image")
    good = (root / "dog" / "nested" / "0.png").read_bytes()
    (root / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    source = image_source("open_clip", "layer.1", "cls", paths=(str(root),), batch_size=3)
    inputs = prepare_inputs(source, 0, tmp_path)
    manifest = inputs.manifest.to_pylist()
    assert len(manifest) == 8
    for row in manifest:
        assert row["label_name"] == Path(row["origin"]).relative_to(root).parts[0]
        assert row["label"] == ["cat", "dog"].index(row["label_name"])
    harvester = Harvester(source)
    blocks = [harvester.harvest(decode_batch(inputs, b)) for b in inputs.batches]
    assert harvester.unreadable == 2
    ids = np.concatenate([b.example_id for b in blocks])
    bad = {r["example_id"] for r in manifest if "broken" in r["origin"] or "trunc" in r["origin"]}
    assert sorted(ids.tolist()) == sorted(set(range(8)) - bad)
    labels = np.concatenate([b.label for b in blocks])
    assert labels.tolist() == [manifest[i]["label"] for i in ids]


def test_image_lmdb_and_hf_dataset_inputs_decode_like_the_folder(tmp_path: Path,
                                                                 image_root: Path) -> None:
    import lmdb
    from datasets import ClassLabel, Dataset, Features, Image

    files = sorted(p for p in image_root.rglob("*") if p.is_file())
    env = lmdb.open(str(tmp_path / "images.lmdb"), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for p in files:
            txn.put(f"{p.relative_to(image_root).parts[0]}/{p.name}".encode(), p.read_bytes())
    env.close()
    labels = [p.relative_to(image_root).parts[0] for p in files]
    ds = Dataset.from_dict(
        {"image": [str(p) for p in files], "label": [["cat", "dog"].index(x) for x in labels]},
        features=Features({"image": Image(), "label": ClassLabel(names=["cat", "dog"])}))
    ds.save_to_disk(str(tmp_path / "ds"))

    def decoded(kind: str, path: str) -> tuple[dict[tuple, str], Any]:
        source = image_source("open_clip", "layer.0", paths=(path,), inputs_kind=kind,
                              batch_size=len(files))
        inputs = prepare_inputs(source, 0, tmp_path)
        batch = decode_batch(inputs, inputs.batches[0])
        by_pixels = {batch.pixels[i].tobytes(): inputs.manifest.column("label_name")[i]
                     .as_py() for i in range(len(files))}
        return by_pixels, batch

    folder, _ = decoded("image_folder", str(image_root))
    from_lmdb, batch = decoded("image_lmdb", str(tmp_path / "images.lmdb"))
    from_ds, _ = decoded("hf_dataset", str(tmp_path / "ds"))
    assert batch.unreadable_examples == ()
    assert from_lmdb == folder and from_ds == folder  # same pixels, same labels


def test_local_checkpoints_load_the_same_weights(tmp_path: Path) -> None:
    """An open_clip checkpoint file and a save_pretrained folder give the saved model's rows."""
    import open_clip
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(3)
    model = open_clip.create_model("ViT-B-32", pretrained=None, **TINY_CLIP)
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    source = image_source("open_clip", "embedding", checkpoint=str(tmp_path / "clip.pt"))
    pixels = _pixels()
    np.testing.assert_allclose(_harvest_pixels(Harvester(source), pixels).acts,
                               model.eval().encode_image(pixels).detach().numpy(), atol=1e-5)

    config = dict(TINY_VIT)
    vit = AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config)).eval()
    vit.save_pretrained(tmp_path / "vit")
    folder = image_source("hf_vision", "layer.0", config=None, model=str(tmp_path / "vit"))
    hidden = vit(pixel_values=pixels, output_hidden_states=True).hidden_states[1]
    np.testing.assert_allclose(_harvest_pixels(Harvester(folder), pixels).acts,
                               hidden.reshape(-1, 32).detach().numpy(), atol=1e-5)
    with pytest.raises(ConfigError, match="is not a file"):
        Harvester(image_source("open_clip", "embedding", checkpoint=str(tmp_path / "nope.pt")))


def test_bad_vision_configs_say_what_to_do(image_root: Path) -> None:
    with pytest.raises(ConfigError, match=r"valid hooks: embedding, layer\.0"):
        Harvester(image_source("open_clip", "layer.7"))
    with pytest.raises(ConfigError, match="not an open_clip architecture"):
        Harvester(image_source("open_clip", "layer.0", model="ViT-Nope"))
    with pytest.raises(ConfigError, match="one row per image"):
        Harvester(image_source("hf_vision", "embedding", "patches"))
    from thresher.config import load_config

    with pytest.raises(ConfigError, match="reads image"):
        load_config({"source": {"backbone": {"kind": "open_clip", "model": "ViT-B-32"},
                                "inputs": {"kind": "python_docstrings"}}})
    with pytest.raises(ConfigError, match="no folder matches"):
        load_config({"source": {"backbone": {"kind": "open_clip", "model": "ViT-B-32"},
                                "inputs": {"kind": "image_folder", "paths": ["/nope/x"]}}})


def test_png_bytes_helper_roundtrip() -> None:
    """LMDB values are encoded files: PIL reads them back from bytes unchanged."""
    from PIL import Image

    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    sink = io.BytesIO()
    Image.fromarray(pixels).save(sink, format="PNG")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(sink.getvalue()))), pixels)
