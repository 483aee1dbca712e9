"""The EEG modality's YAML words: its input kinds and its backbone kinds' settings (torch-free:
config reads it, thresher/config/backbones.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from thresher.config.backbones import ModalitySpec, ModelBackboneConfig


@dataclass(frozen=True)
class PatchTSTConfig(ModelBackboneConfig):
    """A transformers PatchTSTModel: `model` a local checkpoint folder, or `config`:
    PatchTSTConfig arguments (random weights). Hooks: `layer.N` (output of encoder layer N) or
    `embeddings` (input of layer 0); each (channel, patch) token is a row."""

    kind: str = field(default="patchtst", init=False)
    implementation: ClassVar[str] = "thresher.modalities.eeg.backbone:PatchTST"


MODALITY = ModalitySpec(
    "eeg", (PatchTSTConfig,), inputs=("eeg_npy", "edf", "spkit_eeg_sample"),
    pathless_inputs=("spkit_eeg_sample",))
