"""The `patchtst` kind: a transformers PatchTSTModel (settings: eeg/spec.py); each (channel,
patch) token of a window is one row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thresher.config import ModelBackboneConfig, SourceConfig
from thresher.modalities.contract import Backbone
from thresher.modalities.eeg.kind import WindowShape


class PatchTST:
    def load(self, source: SourceConfig, device: str, base_dir: Path) -> Backbone:
        from thresher.modalities.eeg.backbone import PatchTSTBackbone

        assert isinstance(source.backbone, ModelBackboneConfig)
        return PatchTSTBackbone(source, patchtst_config(source.backbone), device)

    def window(self, cfg: ModelBackboneConfig) -> WindowShape:
        config = patchtst_config(cfg)
        return WindowShape(context=int(config.context_length),
                           channels=int(config.num_input_channels),
                           patch_length=int(config.patch_length),
                           patch_stride=int(config.patch_stride))


def patchtst_config(cfg: ModelBackboneConfig) -> Any:
    from transformers import PatchTSTConfig

    from thresher.modalities.model_tools import library_config

    return library_config(
        cfg, lambda kwargs: PatchTSTConfig(**kwargs),
        lambda folder: PatchTSTConfig.from_pretrained(folder, local_files_only=True),
        " (of PatchTSTModel or a PatchTST head model)")
