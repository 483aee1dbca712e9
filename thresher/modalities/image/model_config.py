"""The model configs an image stream needs before (or without) building the model: the
preprocessing and the patch grid come from them."""

from __future__ import annotations

from pathlib import Path
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

    from thresher.modalities.model_tools import transformers_config

    if cfg.config is not None:
        return transformers_config(cfg.config, "(vit or siglip_vision_model) to build an "
                                               "hf_vision model")
    folder = Path(cfg.model).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"source.backbone.model {cfg.model!r} is not a local folder; "
                          "hf_vision loads a save_pretrained folder (this machine is offline) "
                          "or builds random weights from `config`")
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    return getattr(config, "vision_config", config)
