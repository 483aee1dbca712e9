"""What the feature browser needs to show a stream's examples, by modality.

Each renderer turns the examples the SAEs of one stream refer to (example id, position) into
plain JSON that thresher/analysis/report/static/browser.js draws:

- text (the inputs manifest has `token_ids`): each example's tokens as display pieces, so the
  browser shows a window of context around the firing token and highlights it;
- images (`label_name`): one thumbnail per example of the model's square view, written under
  report/images/, plus the token layout (prefix tokens, patch grid) so the browser outlines the
  firing patch on top of it;
- EEG (`channels`, `num_patches`): the firing channel's trace over its window, and the patch
  length and stride, so the browser draws the window with the channel named and the patch marked.

A renderer that cannot render (no manifest, inputs gone) says why in `problem`, and the page
shows that sentence; an example that cannot be read again carries its own reason.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from thresher.config import Config, ConfigError, SourceConfig, config_dir

THUMB = 112  # thumbnail side, pixels


class Examples:
    """Example ids and origins only; the base of the modality renderers."""

    kind = "plain"

    def __init__(self, manifest: pd.DataFrame | None, problem: str | None = None) -> None:
        self.manifest = manifest
        self.problem = problem
        self.label_names: dict[int, str] = {}
        if manifest is not None and {"label", "label_name"} <= set(manifest.columns):
            named = manifest.dropna(subset=["label_name"]).drop_duplicates("label")
            self.label_names = dict(zip(named["label"].astype(int), named["label_name"],
                                        strict=True))

    def label_name(self, label: int) -> str:
        return self.label_names.get(label, str(label))

    def row(self, example_id: int) -> dict[str, Any] | None:
        if self.manifest is None or example_id not in self.manifest.index:
            return None
        return dict(self.manifest.loc[example_id])

    def data(self, refs: Iterable[tuple[int, int]]) -> dict[str, Any]:
        """JSON for the browser: {kind, problem, layout..., examples: {id: {...}}} for the
        (example id, position) pairs the SAEs refer to."""
        examples: dict[str, Any] = {}
        for example_id, position in sorted(set(refs)):
            entry = examples.setdefault(str(example_id), self._base(example_id))
            self.add(entry, example_id, position)
        return {"kind": self.kind, "problem": self.problem, **self.layout(),
                "examples": examples}

    def _base(self, example_id: int) -> dict[str, Any]:
        row = self.row(example_id)
        entry: dict[str, Any] = {"origin": str(row["origin"]) if row and "origin" in row else ""}
        if row and "label_name" in row and row["label_name"] is not None:
            entry["label"] = str(row["label_name"])
        if row is None and self.manifest is not None:
            entry["error"] = f"example {example_id} is not in the stream's inputs manifest"
        return entry

    def layout(self) -> dict[str, Any]:
        return {}

    def add(self, entry: dict[str, Any], example_id: int, position: int) -> None:
        """Fill in what the modality shows of one example (once per example id and
        position)."""


class TextExamples(Examples):
    """Each example's tokens as display pieces (a leading space where a word starts)."""

    kind = "text"

    def __init__(self, manifest: pd.DataFrame, tokenizer: Any) -> None:
        super().__init__(manifest)
        self.tokenizer = tokenizer

    def add(self, entry: dict[str, Any], example_id: int, position: int) -> None:
        if "tokens" in entry or "error" in entry:
            return
        row = self.row(example_id)
        assert row is not None
        entry["tokens"] = token_pieces(self.tokenizer, [int(i) for i in row["token_ids"]])


def token_pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    """Display text of each token, so that joined they read as the decoded text: each token's
    piece is what it adds to the decoded prefix (WordPiece's `##` and BPE's spaces then come
    out right); where decoding is not prefix-stable, the token decoded alone after a space."""
    pieces, before = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[:i + 1])
        if text.startswith(before):
            pieces.append(text[len(before):])
        else:
            pieces.append(" " + tokenizer.decode(ids[i:i + 1]))
        before = text
    return pieces


class ImageExamples(Examples):
    """One thumbnail per example (report/images/<stream>/e<id>.png); the browser outlines the
    firing patch from `layout` (prefix tokens, grid side)."""

    kind = "image"

    def __init__(self, manifest: pd.DataFrame, read: Any, layout: tuple[int, int] | None,
                 crop: bool, folder: Path) -> None:
        super().__init__(manifest)
        self.read, self.grid, self.crop, self.folder = read, layout, crop, folder
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("e*.png"):  # a previous report's thumbnails
            stale.unlink()

    def layout(self) -> dict[str, Any]:
        if self.grid is None:
            return {"prefix": None, "grid": None, "thumb": THUMB}
        return {"prefix": self.grid[0], "grid": self.grid[1], "thumb": THUMB}

    def add(self, entry: dict[str, Any], example_id: int, position: int) -> None:
        if "src" in entry or "error" in entry:
            return
        row = self.row(example_id)
        assert row is not None
        try:
            image = square_view(self.read(str(row["origin"])), self.crop)
        except OSError as exc:  # moved or unreadable since the run: the page says so
            entry["error"] = f"cannot read {row['origin']}: {exc}"
            return
        name = f"e{example_id}.png"
        tmp = self.folder / f".{name}.{uuid.uuid4().hex}.tmp.png"
        image.save(tmp)
        os.replace(tmp, self.folder / name)
        entry["src"] = f"{self.folder.parent.name}/{self.folder.name}/{name}"


class EEGExamples(Examples):
    """The firing channel over its window; the browser marks the patch."""

    kind = "eeg"

    def __init__(self, manifest: pd.DataFrame, signals: dict[str, Any],
                 patch: tuple[int, int]) -> None:
        super().__init__(manifest)
        self.signals, (self.patch_length, self.patch_stride) = signals, patch

    def layout(self) -> dict[str, Any]:
        return {"patch_length": self.patch_length, "patch_stride": self.patch_stride}

    def add(self, entry: dict[str, Any], example_id: int, position: int) -> None:
        if "error" in entry:
            return
        row = self.row(example_id)
        assert row is not None
        recording = str(row["recording"])
        if recording not in self.signals:
            entry["error"] = f"recording {recording} could not be read again"
            return
        channels, patches = list(row["channels"]), int(row["num_patches"])
        channel = position // patches
        start, length = int(row["start"]), int(row["length"])
        entry.update(recording=recording, start=start, num_patches=patches,
                     channels=[str(c) for c in channels])
        traces = entry.setdefault("traces", {})
        if 0 <= channel < len(channels) and str(channel) not in traces:
            trace = np.asarray(self.signals[recording][channel, start:start + length],
                               dtype=np.float64)
            traces[str(channel)] = [float(f"{v:.5g}") for v in trace]


def example_renderer(run_dir: Path, record: dict[str, Any], cfg: Config | None,
                     stream_id: str, examples: pd.DataFrame | None, out: Path,
                     problem: str | None) -> Examples:
    """The renderer for the stream's modality, chosen by its inputs manifest. `problem` (the
    run's config could not be loaded) or a missing manifest give the plain one, saying why."""
    import pyarrow.parquet as pq

    from thresher.harvest.inputs import manifest_path as stream_manifest

    manifest_path = stream_manifest(run_dir, stream_id)
    if not manifest_path.is_file():
        return Examples(None, f"examples show ids only: {manifest_path} is missing (it is "
                              "written by the run's harvest; run `thresher analyze` again)")
    manifest = pq.read_table(manifest_path).to_pandas().set_index("example_id", drop=False)
    if cfg is None:
        return Examples(manifest, problem)
    source = cfg.source_named(stream_id)
    if source.backbone.kind == "stored":
        return Examples(manifest, "examples show ids and origins only: this stream replays a "
                                  f"stored cache ({source.backbone.model}); the report of the "
                                  "run that harvested its inputs shows them rendered")
    try:
        if "token_ids" in manifest:
            from thresher.harvest.backbones import load_tokenizer

            return TextExamples(manifest, load_tokenizer(source.backbone))
        if {"channels", "num_patches"} <= set(manifest.columns):
            return _eeg_examples(manifest, cfg, source)
        if "label_name" in manifest:
            return _image_examples(manifest, cfg, source, record, stream_id, examples,
                                   out / "images" / stream_id)
    except (ConfigError, OSError) as exc:  # the inputs moved: the page shows ids and why
        return Examples(manifest, f"examples show ids only: the run's inputs cannot be read "
                                  f"again ({exc})")
    return Examples(manifest, "examples show ids only: this stream's inputs manifest has no "
                              "renderer (no token_ids, label_name or channels column)")


def _eeg_examples(manifest: pd.DataFrame, cfg: Config, source: SourceConfig) -> Examples:
    from thresher.harvest.eeg import patchtst_config, read_recordings

    recordings, _ = read_recordings(source, config_dir(cfg))
    config = patchtst_config(source.backbone)
    return EEGExamples(manifest, {rec.name: rec.signals for rec in recordings},
                       (int(config.patch_length), int(config.patch_stride)))


def _image_examples(manifest: pd.DataFrame, cfg: Config, source: SourceConfig,
                    record: dict[str, Any], stream_id: str, examples: pd.DataFrame | None,
                    folder: Path) -> Examples:
    from PIL import Image

    from thresher.harvest.vision import _read_image, image_spec

    base = config_dir(cfg)
    spec = image_spec(source, base)
    roots = list(spec.roots)

    def read(origin: str) -> Any:
        if source.inputs.kind == "image_folder":
            path = Path(origin)  # absolute as listed; a relative one is the config's
            with Image.open(path if path.is_absolute() else base / path) as image:
                return image.convert("RGB")
        root, _, key = origin.rpartition("::")  # lmdb_path::key or dataset_path::row
        return _read_image(spec, f"{roots.index(root)}:{key}")

    return ImageExamples(manifest, read, token_layout(source, record, stream_id, examples),
                         crop=source.backbone.kind == "open_clip", folder=folder)


def token_layout(source: SourceConfig, record: dict[str, Any], stream_id: str,
                 examples: pd.DataFrame | None) -> tuple[int, int] | None:
    """(prefix tokens, patch grid side) of a ViT hook's rows, from the rows harvested per image
    (run.json); None for one row per image (`embedding`, tokens `cls`)."""
    if source.hooks == ("embedding",) or source.tokens == "cls":
        return None
    harvest = (record.get("streams", {}).get(stream_id) or {}).get("harvest") \
        or record.get("harvest") or {}
    rows, images = int(harvest.get("rows", 0)), int(harvest.get("examples", 0))
    if images <= 0 or rows % images:
        return None
    tokens = rows // images
    grid = math.isqrt(tokens)
    if source.tokens == "patches":
        # Rows are the patches alone, at positions n_prefix.. : the smallest position seen.
        if grid * grid != tokens or examples is None or not len(examples):
            return None
        return int(examples["position"].min()), grid
    return (tokens - grid * grid, grid) if grid > 0 and tokens - grid * grid <= 8 else None


def square_view(image: Any, crop: bool) -> Any:
    """The model's square view: centre crop (open_clip) or squashed (transformers), THUMB px."""
    from PIL import Image

    if crop:
        w, h = image.size
        side = min(w, h)
        image = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side,
                            (h - side) // 2 + side))
    return image.resize((THUMB, THUMB), Image.BICUBIC)
