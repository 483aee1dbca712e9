"""The `open_clip` kind: an open_clip model's image tower (settings: image/spec.py).

Its preprocessing is open_clip's own, with the published weights' mean, std and resize mode
(which open_clip applies only when it downloads a tag); it centre-crops, so the report shows
the crop the model saw.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thresher.config import ConfigError, SourceConfig
from thresher.modalities.image.model_config import open_clip_model_cfg
from thresher.modalities.image.spec import VisionConfig

if TYPE_CHECKING:
    import numpy as np

    from thresher.modalities.image.backbones import VisionBackbone


class OpenClip:
    crop = True

    def load(self, source: SourceConfig, device: str, base_dir: Path) -> VisionBackbone:
        from thresher.modalities.image.backbones import OpenClipBackbone

        return OpenClipBackbone(source, device)

    def transform(self, cfg: VisionConfig) -> Callable[[Any], np.ndarray]:
        from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

        model_cfg = open_clip_model_cfg(cfg)
        pp = merge_preprocess_dict(PreprocessCfg(), model_cfg.get("preprocess_cfg", {}))
        pp = merge_preprocess_dict(pp, published_preprocess(cfg.model))
        pp["size"] = model_cfg["vision_cfg"].get("image_size", pp["size"])
        pp = merge_preprocess_dict(pp, cfg.preprocess or {})
        tf = image_transform_v2(PreprocessCfg(**pp), is_train=False)
        return lambda image: tf(image).numpy()

    def grid(self, cfg: VisionConfig) -> tuple[int, int] | None:
        try:
            vision = open_clip_model_cfg(cfg)["vision_cfg"]
            size, patch = int(vision.get("image_size", 224)), int(vision.get("patch_size", 0))
        except (ConfigError, TypeError, ValueError):
            return None
        return (1, (size // patch) ** 2) if patch > 0 else None


def published_preprocess(name: str) -> dict[str, Any]:
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
