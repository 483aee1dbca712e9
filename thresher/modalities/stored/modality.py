"""The stored modality: the `stored` source, replaying an activation store block by block."""

from __future__ import annotations

from thresher.config import MODALITY_KINDS
from thresher.modalities.contract import BlockIndexBatch, Modality
from thresher.modalities.stored.source import (
    preflight_stored,
    prepare_stored_inputs,
    render_stored_examples,
    stored_backbone,
)

STORED = Modality(
    name="stored",
    backbone_kinds=MODALITY_KINDS["stored"].backbones,
    batch_type=BlockIndexBatch,
    prepare_inputs=prepare_stored_inputs,
    load_backbone=stored_backbone,
    manifest_schema=None,  # the stored manifest: that of the modality that harvested it
    render_examples=render_stored_examples,
    preflight=preflight_stored,
)
