"""The EEG modality: PatchTST over windows of recordings."""

from __future__ import annotations

from thresher.modalities.contract import Modality, lazy
from thresher.modalities.eeg.recordings import EEG_MANIFEST_SCHEMA, WindowBatch, prepare_eeg_inputs

EEG = Modality(
    name="eeg",
    batch_type=WindowBatch,
    prepare_inputs=prepare_eeg_inputs,
    manifest_schema=EEG_MANIFEST_SCHEMA,
    render_examples=lazy("thresher.modalities.eeg.report", "render_eeg_examples"),
)
