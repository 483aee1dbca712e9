"""What the image modality asks of a backbone kind (thresher/modalities/image/open_clip.py,
hf_vision.py, dinov2.py): its backbone, its preprocessing (run in the CPU stage), the rows one
image gives, and the report's crop. Each kind's settings name its class (image/spec.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from thresher.config import SourceConfig
from thresher.modalities.contract import Backbone, kind_code
from thresher.modalities.image.spec import VisionConfig

if TYPE_CHECKING:
    import numpy as np


class ImageKind(Protocol):
    # The report shows the centre crop the model saw (its preprocessing crops), not the image.
    crop: bool

    def load(self, source: SourceConfig, device: str, base_dir: Path) -> Backbone: ...

    def transform(self, cfg: VisionConfig) -> Callable[[Any], np.ndarray]:
        """The model's own preprocessing: a PIL image to pixels [3, H, W]."""
        ...

    def grid(self, cfg: VisionConfig) -> tuple[int, int] | None:
        """(prefix tokens, patch tokens) of one image at a layer hook; None where unknown
        without the model."""
        ...


def image_kind(cfg: VisionConfig) -> ImageKind:
    kind: ImageKind = kind_code(cfg)
    return kind


def rows_per_image(source: SourceConfig) -> int:
    """Rows one image gives (for progress only; 1 where unknown without the model)."""
    if source.hooks == ("embedding",) or source.tokens == "cls":
        return 1
    grid = image_kind(source.backbone).grid(source.backbone)
    if grid is None:
        return 1
    prefix, patches = grid
    return patches + (prefix if source.tokens == "all" else 0)
