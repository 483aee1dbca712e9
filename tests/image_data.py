"""Image test data shared by several test modules: a labelled folder of random images, and a
vision source over it with a tiny random-weight backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tests.paths import EXAMPLES
from tests.tiny_models import TINY_CLIP, TINY_VIT
from thresher.config import SourceConfig, backbone_kinds
from thresher.modalities.image.spec import ImageInputs


def example_image_folder(root: Path, **kwargs: Any) -> Path:
    """The folder of real photos that examples/make_image_folder.py writes (kwargs: its own)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_image_folder",
                                                  EXAMPLES / "make_image_folder.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_image_folder(root, **kwargs)


def write_images(root: Path, per_label: int = 3, size: int = 40) -> Path:
    """A labelled folder of random PNG/JPEG images (labels: the sub-folder names)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        folder = root / label / "nested" if label == "dog" else root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            pixels = rng.integers(0, 256, (size, size + 8 * i, 3), dtype=np.uint8)
            suffix = "png" if i % 2 == 0 else "jpg"
            Image.fromarray(pixels).save(folder / f"{i}.{suffix}")
    return root


_TINY = object()


def image_source(kind: str, hook: str, tokens: str = "all", paths: tuple[str, ...] = (),
                 config: Any = _TINY, batch_size: int = 4,
                 inputs_kind: str = "image_folder", **backbone: Any) -> SourceConfig:
    """A vision source of backbone `kind` (its tiny random-weight model unless `config` is
    given) over the images at `paths`."""
    if config is _TINY:
        config = TINY_CLIP if kind == "open_clip" else TINY_VIT
    model = backbone.pop("model", "ViT-B-32" if kind == "open_clip" else "")
    return SourceConfig(
        backbone=backbone_kinds()[kind](model=model, config=config, **backbone),  # type: ignore[arg-type]
        hook=hook, tokens=tokens,  # type: ignore[arg-type]
        inputs=ImageInputs(kind=inputs_kind, paths=paths),  # type: ignore[arg-type]
        batch_size=batch_size)
