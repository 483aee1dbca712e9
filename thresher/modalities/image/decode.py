"""The image CPU stage: a batch of references -> pixels, with the model's own preprocessing.

`ImageSpec.decode` runs as a CPU stage before the backbone actors (Ray tasks) or just
before the forward (inline), so the backbone never waits on JPEG decoding. An image that cannot
be read becomes a filler row (example_id -1); its example id stays in
`ImageBatch.unreadable_example_id`, so the run can name it and flag it in the manifest.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from thresher.config import SourceConfig, resolve_dirs
from thresher.modalities.contract import InputBatch
from thresher.modalities.image.kind import image_kind
from thresher.modalities.image.listing import ImageRefBatch, lmdb_env, load_dataset
from thresher.modalities.image.spec import VisionConfig


@dataclass(frozen=True, eq=False)
class ImageBatch(InputBatch):
    """Decoded images, what the vision backbones harvest; filler rows have example_id -1."""

    pixels: np.ndarray  # float32 [batch, 3, H, W], the model's preprocessing applied
    example_id: np.ndarray  # int64 [batch]
    label: np.ndarray  # int64 [batch]
    unreadable_example_id: np.ndarray  # int64 [batch]: the example that could not be read, else -1

    @property
    def unreadable_examples(self) -> tuple[int, ...]:
        ids = np.asarray(self.unreadable_example_id)
        return tuple(ids[ids >= 0].tolist())


@dataclass(frozen=True)
class ImageSpec:
    """What the CPU stage needs to turn references into pixels (small, picklable)."""

    inputs_kind: str
    roots: tuple[str, ...]
    image_column: str
    split: str | None
    backbone: VisionConfig

    def transform(self) -> Callable[[Any], np.ndarray]:
        return model_transform(self.backbone)

    batch_type: ClassVar[type[InputBatch]] = ImageRefBatch

    def decode(self, batch: ImageRefBatch) -> ImageBatch:
        return decode_images(batch, self)


_TRANSFORMS: dict[str, Callable[[Any], np.ndarray]] = {}


def model_transform(cfg: VisionConfig) -> Callable[[Any], np.ndarray]:
    """The model's preprocessing, built once per process (keyed by repr: configs hold dicts)."""
    key = repr(cfg)
    if key not in _TRANSFORMS:
        _TRANSFORMS[key] = image_kind(cfg).transform(cfg)
    return _TRANSFORMS[key]


def read_image(spec: ImageSpec, ref: str) -> Any:
    from PIL import Image

    root_index, _, key = ref.partition(":")
    root = spec.roots[int(root_index)]
    if spec.inputs_kind == "image_folder":
        image = Image.open(key)
    elif spec.inputs_kind == "image_lmdb":
        env = _lmdb_env_cached(root)
        with env.begin() as txn:
            data = txn.get(bytes.fromhex(key))
        if data is None:
            raise OSError(f"key {key!r} is gone from {root!r}")
        image = Image.open(io.BytesIO(bytes(data)))
    else:
        image = load_dataset(root, spec.split)[int(key)][spec.image_column]
        if isinstance(image, dict) and image.get("bytes") is not None:
            image = Image.open(io.BytesIO(image["bytes"]))
        elif isinstance(image, dict) and image.get("path"):
            image = Image.open(image["path"])
        if not isinstance(image, Image.Image):  # a missing image (None) or undecodable bytes
            raise OSError(f"row {key} of {root!r} holds no image ({type(image).__name__})")
    image.load()  # decode now: a truncated file fails here, not inside the transform
    return image.convert("RGB")


@functools.lru_cache(maxsize=8)
def _lmdb_env_cached(path: str) -> Any:
    return lmdb_env(path)


def decode_images(batch: ImageRefBatch, spec: ImageSpec) -> ImageBatch:
    """One batch of references -> pixels [B, 3, H, W] float32 with the model's transforms.

    An unreadable image becomes a filler row (example_id -1), its id in `unreadable_example_id`.
    """
    from PIL import UnidentifiedImageError
    from PIL.Image import DecompressionBombError

    transform = spec.transform()
    example_id = np.array(batch.example_id, dtype=np.int64)
    unreadable = np.full(len(example_id), -1, dtype=np.int64)
    pixels: list[np.ndarray | None] = []
    for i, ref in enumerate(batch.ref):
        if example_id[i] < 0:
            pixels.append(None)
            continue
        try:
            pixels.append(np.asarray(transform(read_image(spec, str(ref))), dtype=np.float32))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError,
                DecompressionBombError):  # a file PIL refuses to decode counts as unreadable
            pixels.append(None)
            unreadable[i] = example_id[i]
            example_id[i] = -1
    shape = next((p.shape for p in pixels if p is not None), None)
    if shape is None:
        shape = _pixel_shape(spec)
    out = np.zeros((len(pixels), *shape), dtype=np.float32)
    for i, p in enumerate(pixels):
        if p is not None:
            out[i] = p
    return ImageBatch(pixels=out, example_id=example_id,
                      label=np.asarray(batch.label, dtype=np.int64),
                      unreadable_example_id=unreadable)


def _pixel_shape(spec: ImageSpec) -> tuple[int, ...]:
    from PIL import Image

    return tuple(np.asarray(spec.transform()(Image.new("RGB", (8, 8)))).shape)


def image_spec(source: SourceConfig, base_dir: Path) -> ImageSpec:
    roots = tuple(str(p) for pattern in source.inputs.paths
                  for p in resolve_dirs(pattern, Path(base_dir)))
    return ImageSpec(inputs_kind=source.inputs.kind, roots=roots,
                     image_column=source.inputs.image_column, split=source.inputs.split,
                     backbone=source.backbone)
