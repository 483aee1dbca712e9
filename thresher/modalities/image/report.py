"""The image modality's examples in the report: one thumbnail per example of the model's square
view, written under report/images/, plus the token layout (prefix tokens, patch grid) so the
browser outlines the firing patch on top of it."""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path
from typing import Any

import pandas as pd

from thresher.config import SourceConfig, config_dir
from thresher.modalities.image.decode import image_spec, read_image
from thresher.modalities.image.kind import image_kind
from thresher.modalities.render import Examples, ExamplesRequest

THUMB = 112  # thumbnail side, pixels


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


def render_image_examples(request: ExamplesRequest) -> Examples:
    from PIL import Image

    source = request.source
    base = config_dir(request.cfg)
    spec = image_spec(source, base)
    roots = list(spec.roots)

    def read(origin: str) -> Any:
        if source.inputs.kind == "image_folder":
            path = Path(origin)  # absolute as listed; a relative one is the config's
            with Image.open(path if path.is_absolute() else base / path) as image:
                return image.convert("RGB")
        root, _, key = origin.rpartition("::")  # lmdb_path::key or dataset_path::row
        return read_image(spec, f"{roots.index(root)}:{key}")

    layout = token_layout(source, request.record, request.stream_id, request.examples)
    return ImageExamples(request.manifest, read, layout, crop=image_kind(source.backbone).crop,
                         folder=request.out / "images" / request.stream_id)


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
