"""Image inputs: references listed once with the run seed, in batches, and the manifest.

Inputs of an image stream are references (a file path, an LMDB key, a dataset row):
`build_image_inputs` lists them in a seeded order and returns input batches of references
(`ImageRefBatch`) and the inputs manifest. The CPU stage (decode.py) turns a batch of
references into pixels.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from thresher.config import ConfigError, SourceConfig, resolve_dirs
from thresher.modalities.contract import InputBatch

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                            ".ppm", ".pgm"})
NO_LABEL = -1

IMAGE_MANIFEST_SCHEMA = pa.schema([
    ("example_id", pa.int64()),
    ("origin", pa.string()),  # file path, "lmdb_path::key" or "dataset_path::row"
    ("label", pa.int64()),  # -1 where the input has no label
    ("label_name", pa.string()),
    ("readable", pa.bool_()),  # false: the harvest could not decode it (no rows came of it)
])


@dataclass(frozen=True, eq=False)
class ImageRefBatch(InputBatch):
    """References to images, decoded by the CPU stage; filler rows have example_id -1."""

    ref: np.ndarray  # str [batch]: "<root index>:<key>"
    example_id: np.ndarray  # int64 [batch]
    label: np.ndarray  # int64 [batch]: -1 where unknown


@dataclass(frozen=True)
class ImageRefs:
    refs: list[str]  # what decode_images reads: "<root index>:<key>"
    origins: list[str]
    labels: list[int]
    label_names: list[str]  # index -> name


def _folder_refs(roots: list[Path]) -> tuple[list[tuple[int, str, str]], list[str]]:
    found: list[tuple[int, str, str]] = []  # (root index, path, label name or "")
    for r, root in enumerate(roots):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                parts = path.relative_to(root).parts
                found.append((r, str(path), parts[0] if len(parts) > 1 else ""))
    names = sorted({label for _, _, label in found if label})
    return found, names


def lmdb_env(path: str | Path) -> Any:
    import lmdb

    try:
        return lmdb.open(str(path), readonly=True, lock=False, readahead=False,
                         subdir=Path(path).is_dir(), max_readers=512)
    except lmdb.Error as exc:
        raise ConfigError(f"{str(path)!r} is not a readable LMDB ({exc})") from exc


def _lmdb_refs(roots: list[Path]) -> tuple[list[tuple[int, str, str]], list[str]]:
    found: list[tuple[int, str, str]] = []
    for r, root in enumerate(roots):
        env = lmdb_env(root)
        with env.begin() as txn:
            for key in txn.cursor().iternext(keys=True, values=False):
                text = bytes(key).decode("utf-8", errors="replace")
                label = text.split("/", 1)[0] if "/" in text else ""
                found.append((r, bytes(key).hex(), label))
        env.close()
    names = sorted({label for _, _, label in found if label})
    return found, names


@functools.lru_cache(maxsize=4)
def load_dataset(path: str, split: str | None) -> Any:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(path)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"source.inputs.paths: {path!r} is not a dataset written by "
                          f"datasets.save_to_disk ({exc})") from exc
    if isinstance(ds, DatasetDict):
        if split is None or split not in ds:
            raise ConfigError(f"source.inputs.split is {split!r} but {path!r} holds the splits "
                              f"{', '.join(ds)}; set split to one of them")
        ds = ds[split]
    return ds


def _dataset_refs(roots: list[Path], split: str | None, image_column: str,
                  label_column: str | None) -> tuple[list[tuple[int, str, str]], list[str]]:
    found: list[tuple[int, str, str]] = []
    names: list[str] = []
    for r, root in enumerate(roots):
        ds = load_dataset(str(root), split)
        if image_column not in ds.column_names:
            raise ConfigError(f"source.inputs.image_column {image_column!r} is not a column of "
                              f"{str(root)!r}; its columns: {', '.join(ds.column_names)}")
        labels: list[str] = [""] * len(ds)
        if label_column is not None and label_column in ds.column_names:
            feature = ds.features[label_column]
            values = ds[label_column]
            if hasattr(feature, "names"):
                labels = [feature.names[int(v)] if v is not None and v >= 0 else ""
                          for v in values]
            else:
                labels = ["" if v is None else str(v) for v in values]
        found.extend((r, str(i), labels[i]) for i in range(len(ds)))
    names = sorted({label for _, _, label in found if label})
    return found, names


def list_images(source: SourceConfig, base_dir: Path) -> ImageRefs:
    """Every image reference of the inputs, in a fixed order, with its label."""
    cfg = source.inputs
    roots: list[Path] = []
    for pattern in cfg.paths:
        matched = resolve_dirs(pattern, Path(base_dir))
        if not matched:
            raise ConfigError(f"source.inputs.paths: no folder matches {pattern!r} (relative "
                              f"paths are read from {str(Path(base_dir).resolve())!r})")
        roots.extend(matched)
    if cfg.kind == "image_folder":
        found, names = _folder_refs(roots)
    elif cfg.kind == "image_lmdb":
        found, names = _lmdb_refs(roots)
    elif cfg.kind == "hf_dataset":
        found, names = _dataset_refs(roots, cfg.split, cfg.image_column, cfg.label_column)
    else:
        raise ConfigError(f"source.inputs.kind {cfg.kind!r} is not an image input")
    index = {name: i for i, name in enumerate(names)}
    refs = [f"{r}:{key}" for r, key, _ in found]
    if cfg.kind == "image_folder":
        origins = [key for _, key, _ in found]
    else:
        origins = [f"{roots[r]}::{key}" for r, key, _ in found]
    labels = [index[label] if label else NO_LABEL for _, _, label in found]
    return ImageRefs(refs=refs, origins=origins, labels=labels, label_names=names)


def build_image_inputs(source: SourceConfig, seed: int,
                       base_dir: Path) -> tuple[list[ImageRefBatch], pa.Table]:
    """Input batches of references (seeded order) and the image manifest."""
    listed = list_images(source, base_dir)
    if not listed.refs:
        raise ConfigError(f"source.inputs ({source.inputs.kind}) holds no image under "
                          f"{list(source.inputs.paths)}; image files end in "
                          f"{', '.join(sorted(IMAGE_SUFFIXES))}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(listed.refs))
    if source.inputs.max_examples is not None:
        order = order[: source.inputs.max_examples]
    refs = [listed.refs[i] for i in order]
    labels = np.array([listed.labels[i] for i in order], dtype=np.int64)
    width = max(len(r) for r in refs)
    bs = source.batch_size
    batches = []
    for start in range(0, len(refs), bs):
        n = min(bs, len(refs) - start)
        ref = np.full(bs, "", dtype=f"<U{width}")
        ref[:n] = refs[start:start + n]
        example_id = np.full(bs, -1, dtype=np.int64)
        example_id[:n] = np.arange(start, start + n)
        label = np.full(bs, NO_LABEL, dtype=np.int64)
        label[:n] = labels[start:start + n]
        batches.append(ImageRefBatch(ref=ref, example_id=example_id, label=label))
    names = listed.label_names
    manifest = pa.table({
        "example_id": pa.array(np.arange(len(refs), dtype=np.int64)),
        "origin": pa.array([listed.origins[i] for i in order], type=pa.string()),
        "label": pa.array(labels),
        "label_name": pa.array([names[v] if v >= 0 else None for v in labels.tolist()],
                               type=pa.string()),
        # Every input is taken as readable until the harvest has tried it (close_inputs).
        "readable": pa.array(np.ones(len(refs), dtype=bool)),
    }, schema=IMAGE_MANIFEST_SCHEMA)
    return batches, manifest
