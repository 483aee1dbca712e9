"""The `hf_vision` kind: a transformers ViT / SigLIP vision model (settings: image/spec.py).

Its preprocessing is the folder's own image processor, or for a random-weight model a square
resize with mean/std 0.5 (what ViT and SigLIP processors both do).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thresher.config import ConfigError, SourceConfig
from thresher.modalities.image.model_config import hf_vision_config
from thresher.modalities.image.spec import VisionConfig

if TYPE_CHECKING:
    import numpy as np

    from thresher.modalities.image.backbones import VisionBackbone


class HFVision:
    crop = False

    def load(self, source: SourceConfig, device: str, base_dir: Path) -> VisionBackbone:
        from thresher.modalities.image.backbones import HFVisionBackbone, hf_vision_model

        return HFVisionBackbone(source, hf_vision_model(source.backbone), device)

    def transform(self, cfg: VisionConfig) -> Callable[[Any], np.ndarray]:
        processor = _image_processor(cfg)
        return lambda image: processor(images=image, return_tensors="np")["pixel_values"][0]

    def grid(self, cfg: VisionConfig) -> tuple[int, int] | None:
        try:
            config = hf_vision_config(cfg)
            size, patch = int(config.image_size), int(config.patch_size)
        except (ConfigError, TypeError, ValueError):
            return None
        return (1, (size // patch) ** 2) if patch > 0 else None


def _image_processor(cfg: VisionConfig) -> Any:
    from transformers import AutoImageProcessor, ViTImageProcessor

    overrides = dict(cfg.preprocess or {})
    folder = Path(cfg.model).expanduser() if cfg.model else None
    own = folder is not None and (folder / "preprocessor_config.json").is_file()
    if cfg.config is None and own:
        processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    else:
        config = hf_vision_config(cfg)
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
