"""The harvester: one backbone forward per input batch, rows out, for any modality.

`Harvester` is a plain class: the in-process harvest (`thresher.harvest.local`) calls `harvest`
directly, and on Ray each harvester actor of the pool (`HarvestWorker`) holds one.
The source's modality (thresher/modalities/registry.py) loads the backbone; each input batch
becomes exactly one `backbone.harvest(batch)` and one ActivationBlock, which carries every hook
of the stream side by side (`ActivationBlock.hook_layout` names them).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from thresher.config import SourceConfig
from thresher.harvest.report import HarvestReport
from thresher.modalities.contract import Backbone, InputBatch, load_backbone
from thresher.modalities.registry import modality_of
from thresher.stream.block import ActivationBlock


class Harvester:
    """Loads the backbone once; turns input batches into activation blocks."""

    def __init__(self, source: SourceConfig, device: str = "cpu",
                 threads: int | None = None, base_dir: str | Path | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.source = source
        self.device = device
        self.base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
        self.modality = modality_of(source)
        self.backbone: Backbone = load_backbone(source, device, self.base_dir)
        self.unreadable = 0  # images the CPU stage could not decode, summed over batches
        self.forward_calls = 0
        self.nonfinite_rows = 0  # rows dropped for NaN or Inf, summed over batches

    @property
    def d_model(self) -> int:
        return self.backbone.d_model

    @property
    def batch_type(self) -> type[InputBatch]:
        """The input batches the backbone harvests (after the modality's CPU stage)."""
        return self.modality.batch_type

    @property
    def hook_layout(self) -> tuple[tuple[str, int], ...]:
        """(hook, width) of each column range of the harvested rows."""
        return tuple(zip(self.backbone.hooks, self.backbone.hook_widths, strict=True))

    def harvest(self, batch: InputBatch) -> ActivationBlock:
        """ONE backbone forward for one input batch, rows for every hook of the stream."""
        return self.harvest_reported(batch)[0]

    def harvest_reported(self, batch: InputBatch) -> tuple[ActivationBlock, HarvestReport]:
        """`harvest`, with what the harvester says about that block (its report counts the
        copies made here; the caller adds those it makes on the way to the trainers).

        Rows holding NaN or Inf are dropped here, where every block is made, and counted
        (`nonfinite_rows`, with the examples they came from): one such row would poison every
        SAE of a bank, and dropping it alone keeps the rest of its batch.
        """
        if not isinstance(batch, self.batch_type) and self.modality.decoder is not None:
            batch = self.modality.decoder(self.source, self.base_dir).decode(batch)  # no CPU stage
        unreadable = batch.unreadable_examples
        self.unreadable += len(unreadable)
        block = dataclasses.replace(self.backbone.harvest(batch), hook_layout=self.hook_layout)
        self.forward_calls += 1
        finite = np.isfinite(block.float32()).all(axis=1)
        nonfinite_rows = int((~finite).sum())
        nonfinite: tuple[int, ...] = ()
        if nonfinite_rows:
            nonfinite = tuple(np.unique(block.example_id[~finite]).tolist())
            self.nonfinite_rows += nonfinite_rows
            block = block.take(finite)  # a copy of the finite rows
        return block, HarvestReport(
            forward_calls=1, examples=len(np.unique(block.example_id)),
            unreadable_examples=unreadable, rows=len(block), nonfinite_rows=nonfinite_rows,
            nonfinite_examples=nonfinite, row_copies=1 if nonfinite_rows else 0)
