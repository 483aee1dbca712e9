"""The synthetic modality: rows made from a known feature dictionary (ground truth)."""

from __future__ import annotations

from thresher.modalities.contract import BlockIndexBatch, Modality
from thresher.modalities.synthetic.model import model_of
from thresher.modalities.synthetic.source import (
    prepare_synthetic_inputs,
    render_synthetic_examples,
)

SYNTHETIC = Modality(
    name="synthetic",
    batch_type=BlockIndexBatch,
    prepare_inputs=prepare_synthetic_inputs,
    manifest_schema=None,  # none: a row's example_id is its index in the stream
    render_examples=render_synthetic_examples,
    ground_truth=model_of,
)
