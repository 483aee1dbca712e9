"""The vision backbones: open_clip's image tower and transformers ViT / SigLIP models.

Backbones return ActivationBlocks: hook ``layer.N`` is block N's residual output (tokens
``all``, ``cls`` or ``patches``; a row's position is its token index, prefix tokens first),
``embedding`` the model's final image embedding (one row per image, position 0).
"""

from __future__ import annotations

import abc
import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thresher.config import ConfigError, SourceConfig
from thresher.modalities.contract import empty_block
from thresher.modalities.image.decode import ImageBatch
from thresher.modalities.image.model_config import hf_vision_config, open_clip_model_cfg
from thresher.modalities.image.spec import OpenClipConfig, VisionConfig
from thresher.modalities.model_tools import LayerTaps, host_rows, hub_offline, layer_list, seeded
from thresher.stream.block import ActivationBlock


@contextlib.contextmanager
def _offline_seeded() -> Iterator[None]:
    with seeded(), hub_offline():
        yield


def _layer_indices(hooks: tuple[str, ...], n_layers: int, kind: str) -> dict[str, int] | None:
    """None for the final embedding, else each `layer.N` hook's block index."""
    if hooks == ("embedding",):
        return None
    indices = {}
    for hook in hooks:
        match = re.fullmatch(r"layer\.(\d+)", hook)
        if match is None or int(match.group(1)) >= n_layers:
            raise ConfigError(
                f"source.hook {hook!r} is not a hook of this {n_layers}-block {kind} model; "
                f"valid hooks: embedding, layer.0 ... layer.{n_layers - 1} (embedding alone)")
        indices[hook] = int(match.group(1))
    return indices


class VisionBackbone(abc.ABC):
    """Shared row logic: capture block outputs (then stop) or take the final embedding."""

    model: torch.nn.Module
    n_prefix: int
    layers: dict[str, int] | None  # block index per hook; None: the final embedding
    hooks: tuple[str, ...]
    hook_widths: tuple[int, ...]
    tokens: str
    device: str
    dtype: torch.dtype
    d_model: int

    def _setup(self, blocks: torch.nn.ModuleList, source: SourceConfig) -> None:
        self.tokens = source.tokens
        self._taps = LayerTaps()
        if self.layers is not None:
            for hook, index in self.layers.items():
                self._taps.tap(blocks[index], hook)
        elif source.tokens != "all":
            raise ConfigError(f"source.tokens is {source.tokens!r} but hook 'embedding' gives "
                              "one row per image; remove tokens or hook a layer.N")
        if self.tokens == "cls" and self.n_prefix == 0 and self.layers is not None:
            raise ConfigError("source.tokens is 'cls' but this model has no CLS token (SigLIP "
                              "pools with attention); use hook 'embedding' for its pooled "
                              "output, or tokens 'patches'")

    @abc.abstractmethod
    def _run_to_layer(self, pixels: torch.Tensor) -> torch.Tensor:
        """Run the tower up to the deepest tapped layer (each backbone kind has its own)."""

    @abc.abstractmethod
    def _embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        """The final image embedding (each backbone kind has its own)."""

    def _per_hook(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """[B, T, d] per layer hook, or [[B, 1, d]] for the final embedding (the model's
        dtype)."""
        pixels = pixels.to(self.device, self.dtype)
        with torch.inference_mode():
            if self.layers is None:
                return [self._embedding(pixels)[:, None, :]]
            captured = self._taps.run(lambda: self._run_to_layer(pixels))
            return [captured[hook] for hook in self.hooks]

    def activations(self, pixels: torch.Tensor) -> torch.Tensor:
        """The hooks' activations side by side: [B, T, d_model]."""
        return torch.cat(self._per_hook(pixels), dim=-1)

    def harvest(self, batch: ImageBatch) -> ActivationBlock:
        real = np.asarray(batch.example_id) >= 0
        example_id = np.asarray(batch.example_id, dtype=np.int64)[real]
        label = np.asarray(batch.label, dtype=np.int64)[real]
        if not real.any():
            return empty_block(self.d_model, labelled=True)
        acts = self.activations(torch.from_numpy(np.array(batch.pixels[real])))
        n_tokens = acts.shape[1]
        if self.layers is None or self.tokens == "all":
            keep = np.arange(n_tokens)
        elif self.tokens == "cls":
            keep = np.arange(1)
        else:
            keep = np.arange(self.n_prefix, n_tokens)
        rows, bf16_bits = host_rows(
            acts[:, torch.from_numpy(keep).to(acts.device)].reshape(-1, acts.shape[-1]))
        return ActivationBlock(
            acts=rows, bf16_bits=bf16_bits,
            example_id=np.repeat(example_id, len(keep)),
            position=np.tile(keep.astype(np.int32), len(example_id)),
            label=np.repeat(label, len(keep)),
        )

    def _probe_widths(self, pixel_shape: tuple[int, ...]) -> None:
        widths = [int(a.shape[-1]) for a in self._per_hook(torch.zeros(1, *pixel_shape))]
        self.hook_widths = tuple(widths)
        self.d_model = sum(widths)


class OpenClipBackbone(VisionBackbone):
    """The image tower of an open_clip model (OpenAI-style ViT or a timm trunk)."""

    def __init__(self, source: SourceConfig, device: str = "cpu") -> None:
        import open_clip

        cfg = source.backbone
        assert isinstance(cfg, OpenClipConfig)
        open_clip_model_cfg(cfg)  # a clear error for an unknown architecture
        checkpoint = cfg.checkpoint
        if checkpoint is not None and not Path(checkpoint).expanduser().is_file():
            raise ConfigError(f"source.backbone.checkpoint {checkpoint!r} is not a file; give "
                              "the path of an open_clip checkpoint (.pt, .bin, .safetensors)")
        try:
            with _offline_seeded():
                model = open_clip.create_model(
                    cfg.model, pretrained=str(Path(checkpoint).expanduser()) if checkpoint
                    else None, **(cfg.config or {}))
        except (RuntimeError, KeyError, TypeError) as exc:
            raise ConfigError(f"source.backbone: open_clip cannot build {cfg.model!r}: "
                              f"{str(exc)[:300]}") from exc
        self.dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
        self.visual = model.visual
        self.clip = model.to(device=device, dtype=self.dtype).eval()
        self.model = self.clip
        self.device = device
        visual = self.visual
        if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
            blocks = visual.transformer.resblocks
            self.n_prefix = 1 if getattr(visual, "class_embedding", None) is not None else 0
        elif hasattr(visual, "trunk") and hasattr(visual.trunk, "blocks"):
            blocks = visual.trunk.blocks
            self.n_prefix = int(getattr(visual.trunk, "num_prefix_tokens", 0))
        else:
            blocks = None
        self.hooks = source.hooks
        self.layers = _layer_indices(self.hooks, len(blocks) if blocks is not None else 0,
                                     cfg.kind)
        if blocks is None and self.layers is not None:
            raise ConfigError(f"open_clip {cfg.model!r} has no transformer blocks to hook; "
                              "use hook 'embedding'")
        self._setup(blocks, source)
        self.image_size = _pair(getattr(visual, "image_size", 224))
        self._probe_widths((3, *self.image_size))

    def _run_to_layer(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)

    def _embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(pixels)


def _pair(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


def hf_vision_model(cfg: VisionConfig) -> tuple[torch.nn.Module, Any]:
    """A transformers vision model (the image tower of a two-tower folder) and its config:
    from `config` with seeded random weights, or from a local folder."""
    from transformers import AutoModel

    config = hf_vision_config(cfg)
    if cfg.config is not None:
        with _offline_seeded():
            model = AutoModel.from_config(config)
    else:
        try:
            with _offline_seeded():
                model = AutoModel.from_pretrained(str(Path(cfg.model).expanduser()),
                                                  local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"source.backbone.model {cfg.model!r}: transformers cannot "
                              f"load it ({str(exc)[:300]})") from exc
    if hasattr(model, "vision_model") and hasattr(model.config, "vision_config"):
        model = model.vision_model  # the image tower of a two-tower folder
    return model, config


class HFVisionBackbone(VisionBackbone):
    """A transformers vision transformer (ViT, SigLIP, DINOv2): its prefix tokens (CLS,
    registers) are what its output has beyond the patch grid."""

    def __init__(self, source: SourceConfig, built: tuple[torch.nn.Module, Any],
                 device: str = "cpu") -> None:
        cfg = source.backbone
        assert isinstance(cfg, VisionConfig)
        model, config = built
        self.dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.device = device
        n_layers = int(config.num_hidden_layers)
        self.hooks = source.hooks
        self.layers = _layer_indices(self.hooks, n_layers, cfg.kind)
        blocks = layer_list(_WithConfig(self.model, n_layers))[2]
        size = _pair(config.image_size)
        patch = _pair(config.patch_size)
        n_patches = (size[0] // patch[0]) * (size[1] // patch[1])
        out = self._forward(torch.zeros(1, 3, *size, device=device, dtype=self.dtype))
        self.n_prefix = int(out.last_hidden_state.shape[1]) - n_patches
        self._setup(blocks, source)
        self.image_size = size
        self._probe_widths((3, *size))

    def _forward(self, pixels: torch.Tensor) -> Any:
        with torch.inference_mode():
            return self.model(pixel_values=pixels)

    def _run_to_layer(self, pixels: torch.Tensor) -> Any:
        return self.model(pixel_values=pixels)

    def _embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixels)
        if self.n_prefix >= 1:
            return out.last_hidden_state[:, 0]  # the final CLS (after the last LayerNorm)
        return out.pooler_output  # SigLIP's attention-pooling head


class _WithConfig(torch.nn.Module):
    """Lets `_layer_list` search a vision tower whose config lacks the text fields."""

    def __init__(self, model: torch.nn.Module, n_layers: int) -> None:
        super().__init__()
        self.inner = model
        self.config = type("Cfg", (), {"num_hidden_layers": n_layers})()
        self._can_record_outputs = getattr(model, "_can_record_outputs", None)
