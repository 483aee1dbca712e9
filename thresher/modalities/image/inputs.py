"""An image stream's Inputs: batches of references to decode, the manifest, the rows to expect."""

from __future__ import annotations

from pathlib import Path

from thresher.config import SourceConfig
from thresher.modalities.contract import Inputs
from thresher.modalities.image.decode import image_spec
from thresher.modalities.image.kind import rows_per_image
from thresher.modalities.image.listing import build_image_inputs


def prepare_image_inputs(source: SourceConfig, seed: int, base_dir: Path) -> Inputs:
    batches, manifest = build_image_inputs(source, seed, base_dir)
    n = manifest.num_rows
    return Inputs(batches=list(batches), manifest=manifest, n_examples=n,
                  planned_rows=n * rows_per_image(source), decode=image_spec(source, base_dir))
