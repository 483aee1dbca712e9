"""The image modality's YAML words: its input kinds and its backbone kinds' settings
(torch-free: config reads it, thresher/config/kinds.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from thresher.config.kinds import InputsConfig, ModalitySpec, ModelBackboneConfig, Requirement

# transformers' image processors (hf_vision, dinov2) and open_clip's transforms run on
# torchvision; the `vision` extra brings it with open_clip.
TORCHVISION = Requirement("torchvision", "vision")


@dataclass(frozen=True)
class VisionConfig(ModelBackboneConfig):
    """What every image kind adds: overrides of the model's own preprocessing (size, mean, std,
    interpolation, resize_mode), e.g. the 0.5 mean/std of SigLIP weights loaded from a file.
    Hooks: `layer.N` (residual output of block N) or `embedding` (the final image embedding)."""

    preprocess: dict[str, Any] | None = None
    requires: ClassVar[tuple[Requirement, ...]] = (TORCHVISION,)


@dataclass(frozen=True)
class OpenClipConfig(VisionConfig):
    """An open_clip model's image tower. `model`: an architecture name (ViT-B-32,
    ViT-B-16-SigLIP2); `checkpoint`: a local checkpoint file loaded into it (.pt, .bin,
    .safetensors); `config`: overrides of the model config (e.g. vision_cfg)."""

    kind: str = field(default="open_clip", init=False)
    implementation: ClassVar[str] = "thresher.modalities.image.open_clip:OpenClip"
    requires: ClassVar[tuple[Requirement, ...]] = (Requirement("open_clip", "vision"),
                                                   TORCHVISION)
    checkpoint: str | None = None


@dataclass(frozen=True)
class HFVisionConfig(VisionConfig):
    """A transformers ViT / SigLIP vision model (or the image tower of a CLIP / SigLIP folder):
    `model` a local save_pretrained folder, or `config` with its `model_type` (random weights)."""

    kind: str = field(default="hf_vision", init=False)
    implementation: ClassVar[str] = "thresher.modalities.image.hf_vision:HFVision"


@dataclass(frozen=True)
class DINOv2Config(VisionConfig):
    """A transformers DINOv2 ViT (Dinov2Model; Dinov2WithRegistersModel where `config` sets
    num_register_tokens): `model` a local save_pretrained folder, or `config` Dinov2Config
    arguments (random weights). A layer's tokens are CLS, the registers, then the patches:
    tokens `cls` takes the CLS, `patches` the patches."""

    kind: str = field(default="dinov2", init=False)
    implementation: ClassVar[str] = "thresher.modalities.image.dinov2:DINOv2"


@dataclass(frozen=True)
class ImageInputs(InputsConfig):
    """image_folder: folders named by `paths`, read recursively, the first sub-folder under a
    root naming the label; image_lmdb: an LMDB whose values are encoded images (a key
    "label/name" names its label); hf_dataset: a datasets.save_to_disk folder. The model's
    preprocessing sets the size."""

    kind: Literal["image_folder", "image_lmdb", "hf_dataset"] = "image_folder"
    max_examples: int | None = None  # use at most this many images
    image_column: str = "image"  # hf_dataset: the column holding images
    label_column: str | None = "label"  # hf_dataset: the class-label column (null: none)
    split: str | None = None  # hf_dataset: the split of a saved DatasetDict
    requires: ClassVar[Mapping[str, tuple[Requirement, ...]]] = {
        "hf_dataset": (Requirement("datasets", "hf-datasets"),)}


MODALITY = ModalitySpec(
    "image", (OpenClipConfig, HFVisionConfig, DINOv2Config), inputs_config=ImageInputs,
    folder_inputs=("image_folder", "image_lmdb", "hf_dataset"),
    chooses_tokens=True, hooks_alone=("embedding",))
