"""The model configs an image stream needs before (or without) building the model: the
preprocessing and the patch grid come from them."""

from __future__ import annotations

from typing import Any

from thresher.config import ConfigError
from thresher.modalities.image.spec import VisionConfig


def open_clip_model_cfg(cfg: VisionConfig) -> dict[str, Any]:
    import open_clip

    model_cfg = open_clip.get_model_config(cfg.model)
    if model_cfg is None:
        raise ConfigError(f"source.backbone.model {cfg.model!r} is not an open_clip "
                          "architecture; valid names: open_clip.list_models(), e.g. ViT-B-32, "
                          "ViT-B-16-SigLIP2")
    return {**model_cfg, **(cfg.config or {})}


def hf_vision_config(cfg: VisionConfig) -> Any:
    from transformers import AutoConfig

    from thresher.modalities.model_tools import library_config, transformers_config

    config = library_config(
        cfg, lambda kwargs: transformers_config(kwargs, "(vit or siglip_vision_model) to build "
                                                        "an hf_vision model"),
        lambda folder: AutoConfig.from_pretrained(folder, local_files_only=True))
    return config if cfg.config is not None else getattr(config, "vision_config", config)
