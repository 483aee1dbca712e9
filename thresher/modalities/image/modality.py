"""The image modality: open_clip and hf_vision backbones over decoded images."""

from __future__ import annotations

from thresher.modalities.contract import Modality, lazy
from thresher.modalities.image.decode import ImageBatch, image_spec
from thresher.modalities.image.inputs import prepare_image_inputs
from thresher.modalities.image.listing import IMAGE_MANIFEST_SCHEMA

IMAGE = Modality(
    name="image",
    batch_type=ImageBatch,
    prepare_inputs=prepare_image_inputs,
    manifest_schema=IMAGE_MANIFEST_SCHEMA,
    render_examples=lazy("thresher.modalities.image.report", "render_image_examples"),
    decoder=image_spec,
)
