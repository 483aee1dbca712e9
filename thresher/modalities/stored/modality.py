"""The stored modality: the `stored` source, replaying an activation store block by block."""

from __future__ import annotations

from thresher.modalities.contract import BlockIndexBatch, Modality
from thresher.modalities.stored.source import (
    preflight_stored,
    prepare_stored_inputs,
    render_stored_examples,
)

STORED = Modality(
    name="stored",
    batch_type=BlockIndexBatch,
    prepare_inputs=prepare_stored_inputs,
    manifest_schema=None,  # the stored manifest: that of the modality that harvested it
    render_examples=render_stored_examples,
    preflight=preflight_stored,
)
