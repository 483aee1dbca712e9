"""Which renderer shows a stream's examples in the report: its modality's.

Each modality renders its own (thresher/modalities/<name>/report.py, on the base of
thresher/modalities/render.py): text as tokens, images as thumbnails, EEG as traces. What is
left here is the choice, and the plain renderer where there is nothing to render with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from thresher.config import Config, ConfigError
from thresher.harvest.inputs import manifest_path as stream_manifest
from thresher.modalities.registry import modality_of
from thresher.modalities.render import Examples, ExamplesRequest


def example_renderer(run_dir: Path, record: dict[str, Any], cfg: Config | None,
                     stream_id: str, examples: pd.DataFrame | None, out: Path,
                     problem: str | None) -> Examples:
    """The renderer of the stream's modality (thresher/modalities/registry.py). `problem` (the
    run's config could not be loaded) or a missing manifest give the plain one, saying why."""
    manifest_path = stream_manifest(run_dir, stream_id)
    if not manifest_path.is_file():
        return Examples(None, f"examples show ids only: {manifest_path} is missing (it is "
                              "written by the run's harvest; run `thresher analyze` again)")
    manifest = pq.read_table(manifest_path).to_pandas().set_index("example_id", drop=False)
    if cfg is None:
        return Examples(manifest, problem)
    source = cfg.source_named(stream_id)
    request = ExamplesRequest(manifest=manifest, cfg=cfg, source=source, record=record,
                              stream_id=stream_id, examples=examples, out=out)
    try:
        return modality_of(source).render_examples(request)
    except (ConfigError, OSError) as exc:  # the inputs moved: the page shows ids and why
        return Examples(manifest, f"examples show ids only: the run's inputs cannot be read "
                                  f"again ({exc})")
