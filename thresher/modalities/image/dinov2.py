"""The `dinov2` kind: a transformers DINOv2 ViT, with or without registers (settings:
image/spec.py, DINOv2Config).

`config` builds Dinov2Model, or Dinov2WithRegistersModel where it sets num_register_tokens,
with seeded random weights; `model` loads a local save_pretrained folder. A layer's tokens are
CLS, the registers, then the patch grid, so an image gives 1 + registers + patches rows (`all`)
and `patches` skips the registers too. Preprocessing is DINOv2's: the shorter side resized to
256/224 of the crop, a centre crop of `image_size`, ImageNet mean and std.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thresher.config import ConfigError, SourceConfig
from thresher.modalities.image.spec import VisionConfig
from thresher.modalities.model_tools import hub_offline, library_config, seeded

if TYPE_CHECKING:
    import numpy as np

    from thresher.modalities.image.backbones import VisionBackbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DINOv2:
    crop = True  # the centre crop is what the model saw

    def load(self, source: SourceConfig, device: str, base_dir: Path) -> VisionBackbone:
        from thresher.modalities.image.backbones import HFVisionBackbone

        return HFVisionBackbone(source, _model(source.backbone), device)

    def transform(self, cfg: VisionConfig) -> Callable[[Any], np.ndarray]:
        processor = _image_processor(cfg)
        return lambda image: processor(images=image, return_tensors="np")["pixel_values"][0]

    def grid(self, cfg: VisionConfig) -> tuple[int, int] | None:
        config = dinov2_config(cfg)
        patches = (int(config.image_size) // int(config.patch_size)) ** 2
        return 1 + int(getattr(config, "num_register_tokens", 0)), patches


def dinov2_config(cfg: VisionConfig) -> Any:
    """The model's config: built from `config`, or read from the local folder."""
    from transformers import AutoConfig, Dinov2Config, Dinov2WithRegistersConfig

    def build(kwargs: dict[str, Any]) -> Any:
        kwargs.pop("model_type", None)
        registers = kwargs.get("num_register_tokens", 0)
        return (Dinov2WithRegistersConfig if registers else Dinov2Config)(**kwargs)

    return library_config(
        cfg, build, lambda folder: AutoConfig.from_pretrained(folder, local_files_only=True))


def _model(cfg: VisionConfig) -> tuple[Any, Any]:
    from transformers import AutoModel, Dinov2Model, Dinov2WithRegistersModel

    config = dinov2_config(cfg)
    if cfg.config is not None:
        registers = getattr(config, "num_register_tokens", 0)
        with seeded():
            model = (Dinov2WithRegistersModel if registers else Dinov2Model)(config)
        return model, config
    try:
        with seeded(), hub_offline():
            model = AutoModel.from_pretrained(str(Path(cfg.model).expanduser()),
                                              local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"source.backbone.model {cfg.model!r}: transformers cannot load it "
                          f"({str(exc)[:300]})") from exc
    return model, config


def _image_processor(cfg: VisionConfig) -> Any:
    from transformers import AutoImageProcessor, BitImageProcessor

    overrides = dict(cfg.preprocess or {})
    folder = Path(cfg.model).expanduser() if cfg.model else None
    if cfg.config is None and folder is not None and (folder / "preprocessor_config.json"
                                                      ).is_file():
        processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    else:
        size = int(dinov2_config(cfg).image_size)
        processor = BitImageProcessor(
            size={"shortest_edge": round(size * 256 / 224)},
            crop_size={"height": size, "width": size}, do_center_crop=True,
            image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
    if "size" in overrides:
        s = int(overrides["size"])
        processor.size = {"shortest_edge": round(s * 256 / 224)}
        processor.crop_size = {"height": s, "width": s}
    for key in ("mean", "std"):
        if key in overrides:
            setattr(processor, f"image_{key}", list(overrides[key]))
    return processor
