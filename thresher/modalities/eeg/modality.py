"""The EEG modality: PatchTST over windows of recordings."""

from __future__ import annotations

from thresher.config import MODALITY_KINDS
from thresher.modalities.contract import Modality
from thresher.modalities.eeg.backbone import eeg_backbone
from thresher.modalities.eeg.recordings import EEG_MANIFEST_SCHEMA, WindowBatch, prepare_eeg_inputs
from thresher.modalities.eeg.report import render_eeg_examples

EEG = Modality(
    name="eeg",
    backbone_kinds=MODALITY_KINDS["eeg"].backbones,
    batch_type=WindowBatch,
    prepare_inputs=prepare_eeg_inputs,
    load_backbone=eeg_backbone,
    manifest_schema=EEG_MANIFEST_SCHEMA,
    render_examples=render_eeg_examples,
)
