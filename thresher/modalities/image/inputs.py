"""An image stream's Inputs: batches of references to decode, the manifest, the rows to expect."""

from __future__ import annotations

from pathlib import Path

from thresher.config import ConfigError, SourceConfig
from thresher.modalities.contract import Inputs
from thresher.modalities.image.decode import image_spec
from thresher.modalities.image.listing import build_image_inputs
from thresher.modalities.image.model_config import hf_vision_config, open_clip_model_cfg


def rows_per_image(source: SourceConfig) -> int:
    """Rows one image gives (for progress only; 1 where unknown without the model)."""
    if source.hooks == ("embedding",) or source.tokens == "cls":
        return 1
    backbone = source.backbone
    try:
        if backbone.kind == "open_clip":
            vision = open_clip_model_cfg(backbone)["vision_cfg"]
            size, patch = int(vision.get("image_size", 224)), int(vision.get("patch_size", 0))
        else:
            config = hf_vision_config(backbone)
            size, patch = int(config.image_size), int(config.patch_size)
    except (ConfigError, TypeError, ValueError):
        return 1
    if patch <= 0:
        return 1
    return (size // patch) ** 2 + (1 if source.tokens == "all" else 0)


def prepare_image_inputs(source: SourceConfig, seed: int, base_dir: Path) -> Inputs:
    batches, manifest = build_image_inputs(source, seed, base_dir)
    n = manifest.num_rows
    return Inputs(batches=list(batches), manifest=manifest, n_examples=n,
                  n_tokens=n * rows_per_image(source), decode=image_spec(source, base_dir))
