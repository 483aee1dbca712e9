"""The EEG modality's examples in the report: the firing channel's trace over its window, and
the patch length and stride, so the browser draws the window with the channel named and the
patch marked."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from thresher.config import config_dir
from thresher.modalities.eeg.kind import window_shape
from thresher.modalities.eeg.recordings import read_recordings
from thresher.modalities.render import Examples, ExamplesRequest


class EEGExamples(Examples):
    """The firing channel over its window; the browser marks the patch."""

    kind = "eeg"

    def __init__(self, manifest: pd.DataFrame, signals: dict[str, Any],
                 patch: tuple[int, int]) -> None:
        super().__init__(manifest)
        self.signals, (self.patch_length, self.patch_stride) = signals, patch

    def layout(self) -> dict[str, Any]:
        return {"patch_length": self.patch_length, "patch_stride": self.patch_stride}

    def add(self, entry: dict[str, Any], example_id: int, position: int) -> None:
        if "error" in entry:
            return
        row = self.row(example_id)
        assert row is not None
        recording = str(row["recording"])
        if recording not in self.signals:
            entry["error"] = f"recording {recording} could not be read again"
            return
        channels, patches = list(row["channels"]), int(row["num_patches"])
        channel = position // patches
        start, length = int(row["start"]), int(row["length"])
        entry.update(recording=recording, start=start, num_patches=patches,
                     channels=[str(c) for c in channels])
        traces = entry.setdefault("traces", {})
        if 0 <= channel < len(channels) and str(channel) not in traces:
            trace = np.asarray(self.signals[recording][channel, start:start + length],
                               dtype=np.float64)
            traces[str(channel)] = [float(f"{v:.5g}") for v in trace]


def render_eeg_examples(request: ExamplesRequest) -> Examples:
    recordings, _ = read_recordings(request.source, config_dir(request.cfg))
    shape = window_shape(request.source.backbone)
    return EEGExamples(request.manifest, {rec.name: rec.signals for rec in recordings},
                       (shape.patch_length, shape.patch_stride))
