"""The text modality: hf_text and transformer_lens backbones over tokenised windows."""

from __future__ import annotations

from thresher.modalities.contract import Modality, lazy
from thresher.modalities.text.preflight import preflight_text
from thresher.modalities.text.windows import TEXT_MANIFEST_SCHEMA, TokenBatch, prepare_text_inputs

TEXT = Modality(
    name="text",
    batch_type=TokenBatch,
    prepare_inputs=prepare_text_inputs,
    manifest_schema=TEXT_MANIFEST_SCHEMA,
    render_examples=lazy("thresher.modalities.text.report", "render_text_examples"),
    preflight=preflight_text,
)
