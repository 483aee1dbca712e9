"""What the EEG modality asks of a backbone kind (thresher/modalities/eeg/patchtst.py): its
backbone, and the windows its model takes, read from its config without loading it. Each
kind's settings name its class (eeg/spec.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from thresher.config import ModelBackboneConfig, SourceConfig
from thresher.modalities.contract import Backbone, kind_code


@dataclass(frozen=True)
class WindowShape:
    """The windows a model takes and the tokens it cuts them into (one row per token)."""

    context: int  # samples per window
    channels: int
    patch_length: int  # samples per patch
    patch_stride: int  # samples between patch starts

    @property
    def patches(self) -> int:
        """Patches per channel: a row's position is channel * patches + patch."""
        return (self.context - self.patch_length) // self.patch_stride + 1


class EEGKind(Protocol):
    def load(self, source: SourceConfig, device: str, base_dir: Path) -> Backbone: ...

    def window(self, cfg: ModelBackboneConfig) -> WindowShape:
        """The model's windows, from its config (no weights loaded)."""
        ...


def window_shape(cfg: ModelBackboneConfig) -> WindowShape:
    kind: EEGKind = kind_code(cfg)
    return kind.window(cfg)
