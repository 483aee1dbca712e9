"""What the feature browser needs to show a stream's examples: the renderer contract.

Each modality's renderer (`Modality.render_examples`, in its folder's report.py) turns the
examples the SAEs of one stream refer to (example id, position) into plain JSON that
thresher/analysis/report/static/browser.js draws. `Examples` is the base: ids, origins and
labels only; a renderer that cannot render (no manifest, inputs gone) says why in `problem`,
and the page shows that sentence; an example that cannot be read again carries its own reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thresher.config import Config, SourceConfig

if TYPE_CHECKING:  # the report's processes import pandas; the harvest's need not
    import pandas as pd


@dataclass(frozen=True)
class ExamplesRequest:
    """What a modality's renderer gets: one stream's manifest and where the run came from."""

    manifest: pd.DataFrame  # the inputs manifest, indexed by example_id
    cfg: Config
    source: SourceConfig
    record: dict[str, Any]  # run.json
    stream_id: str
    examples: pd.DataFrame | None  # the (example_id, position) rows the SAEs refer to
    out: Path  # the report's folder


class Examples:
    """Example ids and origins only; the base of the modality renderers."""

    kind = "plain"

    def __init__(self, manifest: pd.DataFrame | None, problem: str | None = None) -> None:
        self.manifest = manifest
        self.problem = problem
        self.label_names: dict[int, str] = {}
        if manifest is not None and {"label", "label_name"} <= set(manifest.columns):
            named = manifest.dropna(subset=["label_name"]).drop_duplicates("label")
            self.label_names = dict(zip(named["label"].astype(int), named["label_name"],
                                        strict=True))

    def label_name(self, label: int) -> str:
        return self.label_names.get(label, str(label))

    def row(self, example_id: int) -> dict[str, Any] | None:
        if self.manifest is None or example_id not in self.manifest.index:
            return None
        return dict(self.manifest.loc[example_id])

    def data(self, refs: Iterable[tuple[int, int]]) -> dict[str, Any]:
        """JSON for the browser: {kind, problem, layout..., examples: {id: {...}}} for the
        (example id, position) pairs the SAEs refer to."""
        examples: dict[str, Any] = {}
        for example_id, position in sorted(set(refs)):
            entry = examples.setdefault(str(example_id), self._base(example_id))
            self.add(entry, example_id, position)
        return {"kind": self.kind, "problem": self.problem, **self.layout(),
                "examples": examples}

    def _base(self, example_id: int) -> dict[str, Any]:
        row = self.row(example_id)
        entry: dict[str, Any] = {"origin": str(row["origin"]) if row and "origin" in row else ""}
        if row and "label_name" in row and row["label_name"] is not None:
            entry["label"] = str(row["label_name"])
        if row is None and self.manifest is not None:
            entry["error"] = f"example {example_id} is not in the stream's inputs manifest"
        return entry

    def layout(self) -> dict[str, Any]:
        return {}

    def add(self, entry: dict[str, Any], example_id: int, position: int) -> None:
        """Fill in what the modality shows of one example (once per example id and
        position)."""
