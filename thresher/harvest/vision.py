"""Images: listing, decoding (the CPU stage) and the vision backbones (open_clip, hf_vision).

Inputs of an image stream are references (a file path, an LMDB key, a dataset row), listed
once with the run seed: `build_image_inputs` returns input batches of references and the
inputs manifest. `decode_images` turns one batch of references into the pixels the model
wants, with the model's own preprocessing; it runs as a CPU stage before the backbone actors
(Ray) or just before the forward (inline), so the backbone never waits on JPEG decoding.
An image that cannot be read becomes a filler row (example_id -1) and is counted.

Backbones return ActivationBlocks: hook ``layer.N`` is block N's residual output (tokens
``all``, ``cls`` or ``patches``; a row's position is its token index, prefix tokens first),
``embedding`` the model's final image embedding (one row per image, position 0).
"""

from __future__ import annotations

import abc
import contextlib
import functools
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from thresher.config import BackboneConfig, ConfigError, SourceConfig, resolve_dirs
from thresher.stream.block import ActivationBlock

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                            ".ppm", ".pgm"})
NO_LABEL = -1

IMAGE_INPUTS_SCHEMA = pa.schema([
    ("example_id", pa.int64()),
    ("origin", pa.string()),  # file path, "lmdb_path::key" or "dataset_path::row"
    ("label", pa.int64()),  # -1 where the input has no label
    ("label_name", pa.string()),
])


# --------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------


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


def _lmdb_env(path: str | Path) -> Any:
    import lmdb

    try:
        return lmdb.open(str(path), readonly=True, lock=False, readahead=False,
                         subdir=Path(path).is_dir(), max_readers=512)
    except lmdb.Error as exc:
        raise ConfigError(f"{str(path)!r} is not a readable LMDB ({exc})") from exc


def _lmdb_refs(roots: list[Path]) -> tuple[list[tuple[int, str, str]], list[str]]:
    found: list[tuple[int, str, str]] = []
    for r, root in enumerate(roots):
        env = _lmdb_env(root)
        with env.begin() as txn:
            for key in txn.cursor().iternext(keys=True, values=False):
                text = bytes(key).decode("utf-8", errors="replace")
                label = text.split("/", 1)[0] if "/" in text else ""
                found.append((r, bytes(key).hex(), label))
        env.close()
    names = sorted({label for _, _, label in found if label})
    return found, names


@functools.lru_cache(maxsize=4)
def _load_dataset(path: str, split: str | None) -> Any:
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
        ds = _load_dataset(str(root), split)
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


# --------------------------------------------------------------------------------------------
# Preprocessing: the model's own transforms, as a picklable spec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSpec:
    """What the CPU stage needs to turn references into pixels (small, picklable)."""

    inputs_kind: str
    roots: tuple[str, ...]
    image_column: str
    split: str | None
    backbone: BackboneConfig

    def transform(self) -> Callable[[Any], np.ndarray]:
        return _transform(self.backbone)


def _open_clip_model_cfg(cfg: BackboneConfig) -> dict[str, Any]:
    import open_clip

    model_cfg = open_clip.get_model_config(cfg.model)
    if model_cfg is None:
        raise ConfigError(f"source.backbone.model {cfg.model!r} is not an open_clip "
                          "architecture; valid names: open_clip.list_models(), e.g. ViT-B-32, "
                          "ViT-B-16-SigLIP2")
    return {**model_cfg, **(cfg.config or {})}


def _make_transform(cfg: BackboneConfig) -> Callable[[Any], np.ndarray]:
    if cfg.kind == "open_clip":
        from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

        model_cfg = _open_clip_model_cfg(cfg)
        pp = merge_preprocess_dict(PreprocessCfg(), model_cfg.get("preprocess_cfg", {}))
        pp = merge_preprocess_dict(pp, _published_preprocess(cfg.model))
        pp["size"] = model_cfg["vision_cfg"].get("image_size", pp["size"])
        pp = merge_preprocess_dict(pp, cfg.preprocess or {})
        tf = image_transform_v2(PreprocessCfg(**pp), is_train=False)
        return lambda image: tf(image).numpy()
    processor = _hf_image_processor(cfg)
    return lambda image: processor(images=image, return_tensors="np")["pixel_values"][0]


def _published_preprocess(name: str) -> dict[str, Any]:
    """The preprocessing of an open_clip architecture's published weights (mean, std,
    interpolation, resize mode), where all its pretrained tags agree; {} where they differ.

    open_clip applies it only when it downloads a tag; a random-weight model or one loaded from
    a checkpoint file gets it here too (SigLIP2: mean/std 0.5 and squash, not OpenAI's).
    """
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    keys = ("mean", "std", "interpolation", "resize_mode")
    found = set()
    for tag in list_pretrained_tags_by_model(name):
        published = get_pretrained_cfg(name, tag)
        found.add(json.dumps({k: published[k] for k in keys if k in published}))
    return json.loads(found.pop()) if len(found) == 1 else {}


_TRANSFORMS: dict[str, Callable[[Any], np.ndarray]] = {}


def _transform(cfg: BackboneConfig) -> Callable[[Any], np.ndarray]:
    """The model's preprocessing, built once per process (keyed by repr: configs hold dicts)."""
    key = repr(cfg)
    if key not in _TRANSFORMS:
        _TRANSFORMS[key] = _make_transform(cfg)
    return _TRANSFORMS[key]


def _hf_image_processor(cfg: BackboneConfig) -> Any:
    from transformers import AutoImageProcessor, ViTImageProcessor

    overrides = dict(cfg.preprocess or {})
    folder = Path(cfg.model).expanduser() if cfg.model else None
    own = folder is not None and (folder / "preprocessor_config.json").is_file()
    if cfg.config is None and own:
        processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    else:
        config = _hf_vision_config(cfg)
        size = int(config.image_size)
        # ViT and SigLIP processors both resize to a square and normalise with mean/std 0.5.
        processor = ViTImageProcessor(size={"height": size, "width": size},
                                      image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    if "size" in overrides:
        s = int(overrides["size"])
        processor.size = {"height": s, "width": s}
    for key in ("mean", "std"):
        if key in overrides:
            setattr(processor, f"image_{key}", list(overrides[key]))
    return processor


def _read_image(spec: ImageSpec, ref: str) -> Any:
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
        image = _load_dataset(root, spec.split)[int(key)][spec.image_column]
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
    return _lmdb_env(path)


def decode_images(batch: dict[str, np.ndarray], spec: ImageSpec) -> dict[str, np.ndarray]:
    """One batch of references -> pixels [B, 3, H, W] float32 with the model's transforms.

    An unreadable image becomes a filler row (example_id -1) flagged in `unreadable`.
    """
    from PIL import UnidentifiedImageError
    from PIL.Image import DecompressionBombError

    transform = spec.transform()
    example_id = np.array(batch["example_id"], dtype=np.int64)
    unreadable = np.zeros(len(example_id), dtype=np.int64)
    pixels: list[np.ndarray | None] = []
    for i, ref in enumerate(batch["ref"]):
        if example_id[i] < 0:
            pixels.append(None)
            continue
        try:
            pixels.append(np.asarray(transform(_read_image(spec, str(ref))), dtype=np.float32))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError,
                DecompressionBombError):  # a file PIL refuses to decode counts as unreadable
            pixels.append(None)
            example_id[i] = -1
            unreadable[i] = 1
    shape = next((p.shape for p in pixels if p is not None), None)
    if shape is None:
        shape = _pixel_shape(spec)
    out = np.zeros((len(pixels), *shape), dtype=np.float32)
    for i, p in enumerate(pixels):
        if p is not None:
            out[i] = p
    return {"pixels": out, "example_id": example_id,
            "label": np.asarray(batch["label"], dtype=np.int64), "unreadable": unreadable}


def _pixel_shape(spec: ImageSpec) -> tuple[int, ...]:
    from PIL import Image

    return tuple(np.asarray(spec.transform()(Image.new("RGB", (8, 8)))).shape)


def decode_stage_remote_args() -> dict[str, Any]:
    """Ray Data `ray_remote_args_fn` of the decode stage.

    Its presence keeps Ray Data from fusing the decode tasks into the backbone actors (Ray 2.60
    fuses a task map into the next actor map when their remote args match), which would put
    JPEG decoding back on the backbone's critical path.
    """
    return {}


def decode_stage(items: dict[str, np.ndarray], spec: ImageSpec) -> dict[str, np.ndarray]:
    """Ray Data UDF of the CPU stage: each item is one input batch of references."""
    decoded = [decode_images({name: column[i] for name, column in items.items()}, spec)
               for i in range(len(items["example_id"]))]
    out = {name: np.stack([d[name] for d in decoded]) for name in decoded[0]}
    # Columns the decoding does not use ride along (e.g. the pipeline's batch index).
    out.update({name: column for name, column in items.items()
                if name not in out and name != "ref"})
    return out


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def image_spec(source: SourceConfig, base_dir: Path) -> ImageSpec:
    roots = tuple(str(p) for pattern in source.inputs.paths
                  for p in resolve_dirs(pattern, Path(base_dir)))
    return ImageSpec(inputs_kind=source.inputs.kind, roots=roots,
                     image_column=source.inputs.image_column, split=source.inputs.split,
                     backbone=source.backbone)


def build_image_inputs(source: SourceConfig, seed: int,
                       base_dir: Path) -> tuple[list[dict[str, np.ndarray]], pa.Table]:
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
        batches.append({"ref": ref, "example_id": example_id, "label": label})
    names = listed.label_names
    manifest = pa.table({
        "example_id": pa.array(np.arange(len(refs), dtype=np.int64)),
        "origin": pa.array([listed.origins[i] for i in order], type=pa.string()),
        "label": pa.array(labels),
        "label_name": pa.array([names[v] if v >= 0 else None for v in labels.tolist()],
                               type=pa.string()),
    }, schema=IMAGE_INPUTS_SCHEMA)
    return batches, manifest


# --------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _offline_seeded() -> Iterator[None]:
    from thresher.harvest.backbones import _hub_offline, _seeded

    with _seeded(), _hub_offline():
        yield


def _layer_indices(hooks: tuple[str, ...], n_layers: int, kind: str) -> dict[str, int] | None:
    """None for the final embedding, else each `layer.N` hook's block index."""
    if hooks == ("embedding",):
        return None
    indices = {}
    for hook in hooks:
        match = re.fullmatch(r"layer\.(\d+)", hook)
        if match is None or int(match.group(1)) >= n_layers:
            raise ConfigError(
                f"source.hook {hook!r} is not a hook of this {n_layers}-block {kind} model; "
                f"valid hooks: embedding, layer.0 ... layer.{n_layers - 1} (embedding alone)")
        indices[hook] = int(match.group(1))
    return indices


class _VisionBackbone(abc.ABC):
    """Shared row logic: capture block outputs (then stop) or take the final embedding."""

    model: torch.nn.Module
    n_prefix: int
    layers: dict[str, int] | None  # block index per hook; None: the final embedding
    hooks: tuple[str, ...]
    hook_widths: tuple[int, ...]
    tokens: str
    device: str
    dtype: torch.dtype
    d_model: int
    n_ctx: int | None = None

    def _setup(self, blocks: torch.nn.ModuleList, source: SourceConfig) -> None:
        from thresher.harvest.backbones import LayerTaps

        self.tokens = source.tokens
        self._taps = LayerTaps()
        if self.layers is not None:
            for hook, index in self.layers.items():
                self._taps.tap(blocks[index], hook)
        elif source.tokens != "all":
            raise ConfigError(f"source.tokens is {source.tokens!r} but hook 'embedding' gives "
                              "one row per image; remove tokens or hook a layer.N")
        if self.tokens == "cls" and self.n_prefix == 0 and self.layers is not None:
            raise ConfigError("source.tokens is 'cls' but this model has no CLS token (SigLIP "
                              "pools with attention); use hook 'embedding' for its pooled "
                              "output, or tokens 'patches'")

    @abc.abstractmethod
    def _run_to_layer(self, pixels: torch.Tensor) -> torch.Tensor:
        """Run the tower up to the deepest tapped layer (each backbone kind has its own)."""

    @abc.abstractmethod
    def _embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        """The final image embedding (each backbone kind has its own)."""

    def _per_hook(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """[B, T, d] per layer hook, or [[B, 1, d]] for the final embedding (float32)."""
        pixels = pixels.to(self.device, self.dtype)
        with torch.inference_mode():
            if self.layers is None:
                return [self._embedding(pixels).float()[:, None, :]]
            captured = self._taps.run(lambda: self._run_to_layer(pixels))
            return [captured[hook].float() for hook in self.hooks]

    def activations(self, pixels: torch.Tensor) -> torch.Tensor:
        """The hooks' activations side by side: [B, T, d_model]."""
        return torch.cat(self._per_hook(pixels), dim=-1)

    def harvest(self, batch: dict[str, np.ndarray]) -> ActivationBlock:
        real = np.asarray(batch["example_id"]) >= 0
        example_id = np.asarray(batch["example_id"], dtype=np.int64)[real]
        label = np.asarray(batch["label"], dtype=np.int64)[real]
        if not real.any():
            return empty_block(self.d_model, labelled=True)
        acts = self.activations(torch.from_numpy(np.array(batch["pixels"][real])))
        n_tokens = acts.shape[1]
        if self.layers is None or self.tokens == "all":
            keep = np.arange(n_tokens)
        elif self.tokens == "cls":
            keep = np.arange(1)
        else:
            keep = np.arange(self.n_prefix, n_tokens)
        rows = acts[:, torch.from_numpy(keep).to(acts.device)].reshape(-1, acts.shape[-1])
        return ActivationBlock(
            acts=np.ascontiguousarray(rows.cpu().numpy()),
            example_id=np.repeat(example_id, len(keep)),
            position=np.tile(keep.astype(np.int32), len(example_id)),
            label=np.repeat(label, len(keep)),
        )

    def _probe_widths(self, pixel_shape: tuple[int, ...]) -> None:
        widths = [int(a.shape[-1]) for a in self._per_hook(torch.zeros(1, *pixel_shape))]
        self.hook_widths = tuple(widths)
        self.d_model = sum(widths)


def empty_block(d: int, labelled: bool = False) -> ActivationBlock:
    return ActivationBlock(acts=np.zeros((0, d), dtype=np.float32),
                           example_id=np.zeros(0, dtype=np.int64),
                           position=np.zeros(0, dtype=np.int32),
                           label=np.zeros(0, dtype=np.int64) if labelled else None)


class OpenClipBackbone(_VisionBackbone):
    """The image tower of an open_clip model (OpenAI-style ViT or a timm trunk)."""

    def __init__(self, source: SourceConfig, device: str = "cpu") -> None:
        import open_clip

        cfg = source.backbone
        _open_clip_model_cfg(cfg)  # a clear error for an unknown architecture
        checkpoint = cfg.checkpoint
        if checkpoint is not None and not Path(checkpoint).expanduser().is_file():
            raise ConfigError(f"source.backbone.checkpoint {checkpoint!r} is not a file; give "
                              "the path of an open_clip checkpoint (.pt, .bin, .safetensors)")
        try:
            with _offline_seeded():
                model = open_clip.create_model(
                    cfg.model, pretrained=str(Path(checkpoint).expanduser()) if checkpoint
                    else None, **(cfg.config or {}))
        except (RuntimeError, KeyError, TypeError) as exc:
            raise ConfigError(f"source.backbone: open_clip cannot build {cfg.model!r}: "
                              f"{str(exc)[:300]}") from exc
        self.dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
        self.visual = model.visual
        self.clip = model.to(device=device, dtype=self.dtype).eval()
        self.model = self.clip
        self.device = device
        visual = self.visual
        if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
            blocks = visual.transformer.resblocks
            self.n_prefix = 1 if getattr(visual, "class_embedding", None) is not None else 0
        elif hasattr(visual, "trunk") and hasattr(visual.trunk, "blocks"):
            blocks = visual.trunk.blocks
            self.n_prefix = int(getattr(visual.trunk, "num_prefix_tokens", 0))
        else:
            blocks = None
        self.hooks = source.hooks
        self.layers = _layer_indices(self.hooks, len(blocks) if blocks is not None else 0,
                                     "open_clip")
        if blocks is None and self.layers is not None:
            raise ConfigError(f"open_clip {cfg.model!r} has no transformer blocks to hook; "
                              "use hook 'embedding'")
        self._setup(blocks, source)
        self.image_size = _pair(getattr(visual, "image_size", 224))
        self._probe_widths((3, *self.image_size))

    def _run_to_layer(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)

    def _embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(pixels)


def _pair(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


def _hf_vision_config(cfg: BackboneConfig) -> Any:
    from transformers import AutoConfig

    if cfg.config is not None:
        config = dict(cfg.config)
        model_type = config.pop("model_type", None)
        if not model_type:
            raise ConfigError("source.backbone.config needs `model_type` (vit or "
                              "siglip_vision_model) to build an hf_vision model")
        try:
            return AutoConfig.for_model(model_type, **config)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"source.backbone.config: {exc}") from exc
    folder = Path(cfg.model).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"source.backbone.model {cfg.model!r} is not a local folder; "
                          "hf_vision loads a save_pretrained folder (this machine is offline) "
                          "or builds random weights from `config`")
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    return getattr(config, "vision_config", config)


class HFVisionBackbone(_VisionBackbone):
    """A transformers ViT / SigLIP vision model (or the vision tower of a CLIP/SigLIP folder)."""

    def __init__(self, source: SourceConfig, device: str = "cpu") -> None:
        from transformers import AutoModel

        from thresher.harvest.backbones import _layer_list

        cfg = source.backbone
        config = _hf_vision_config(cfg)
        if cfg.config is not None:
            with _offline_seeded():
                model = AutoModel.from_config(config)
        else:
            try:
                with _offline_seeded():
                    model = AutoModel.from_pretrained(str(Path(cfg.model).expanduser()),
                                                      local_files_only=True)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"source.backbone.model {cfg.model!r}: transformers cannot "
                                  f"load it ({str(exc)[:300]})") from exc
        if hasattr(model, "vision_model") and hasattr(model.config, "vision_config"):
            model = model.vision_model  # the image tower of a two-tower folder
        self.dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.device = device
        n_layers = int(config.num_hidden_layers)
        self.hooks = source.hooks
        self.layers = _layer_indices(self.hooks, n_layers, "hf_vision")
        blocks = _layer_list(_WithConfig(self.model, n_layers))[2]
        size = _pair(config.image_size)
        patch = _pair(config.patch_size)
        n_patches = (size[0] // patch[0]) * (size[1] // patch[1])
        out = self._forward(torch.zeros(1, 3, *size, device=device, dtype=self.dtype))
        self.n_prefix = int(out.last_hidden_state.shape[1]) - n_patches
        self._setup(blocks, source)
        self.image_size = size
        self._probe_widths((3, *size))

    def _forward(self, pixels: torch.Tensor) -> Any:
        with torch.inference_mode():
            return self.model(pixel_values=pixels)

    def _run_to_layer(self, pixels: torch.Tensor) -> Any:
        return self.model(pixel_values=pixels)

    def _embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixels)
        if self.n_prefix >= 1:
            return out.last_hidden_state[:, 0]  # the final CLS (after the last LayerNorm)
        return out.pooler_output  # SigLIP's attention-pooling head


class _WithConfig(torch.nn.Module):
    """Lets `_layer_list` search a vision tower whose config lacks the text fields."""

    def __init__(self, model: torch.nn.Module, n_layers: int) -> None:
        super().__init__()
        self.inner = model
        self.config = type("Cfg", (), {"num_hidden_layers": n_layers})()
        self._can_record_outputs = getattr(model, "_can_record_outputs", None)
