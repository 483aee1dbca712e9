"""The `synthetic` source as a stream: one input batch a block, made on demand by its model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from thresher.config import SourceConfig
from thresher.modalities.contract import BlockIndexBatch, Inputs
from thresher.modalities.render import Examples, ExamplesRequest
from thresher.modalities.synthetic.model import SyntheticModel, settings_of
from thresher.modalities.synthetic.spec import HOOK
from thresher.stream.block import ActivationBlock


class SyntheticBackbone:
    """Input batch [i] -> block i of the synthetic stream (one hook, `synthetic`)."""

    def __init__(self, source: SourceConfig) -> None:
        self.cfg = settings_of(source)
        self.model = SyntheticModel(self.cfg)
        self.hooks = (HOOK,)
        self.hook_widths = (self.cfg.d_in,)
        self.d_model = self.cfg.d_in

    def harvest(self, batch: BlockIndexBatch) -> ActivationBlock:
        block = batch.index
        x = self.model.block_acts(block)
        start = block * self.cfg.block_rows
        return ActivationBlock(acts=x, example_id=np.arange(start, start + len(x), dtype=np.int64),
                               position=np.zeros(len(x), dtype=np.int32),
                               hook_layout=((HOOK, self.cfg.d_in),))


def prepare_synthetic_inputs(source: SourceConfig, seed: int, base_dir: Path) -> Inputs:
    """One input batch per block, in block order (the holdout is the first blocks); no
    manifest: a row's example_id is its index in the stream."""
    cfg = settings_of(source)
    model = SyntheticModel(cfg)
    batches = [BlockIndexBatch.of(i) for i in range(model.n_blocks)]
    return Inputs(batches=list(batches), manifest=None, n_examples=cfg.rows, planned_rows=cfg.rows)


class Synthetic:
    """The `synthetic` kind (thresher/modalities/synthetic/spec.py): blocks from its model."""

    def load(self, source: SourceConfig, device: str, base_dir: Path) -> SyntheticBackbone:
        return SyntheticBackbone(source)


def render_synthetic_examples(request: ExamplesRequest) -> Examples:
    return Examples(request.manifest, "examples show ids only: a synthetic source's rows are "
                    "made from its dictionary and have no inputs to show")
