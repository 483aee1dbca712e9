"""The harvester: one backbone forward per input batch, rows out.

`Harvester` is a plain class: the in-process harvest (`thresher.harvest.local`) calls `harvest`
directly, and on Ray the `map_batches` UDF of a fixed actor pool (`HarvestWorker`) wraps one.
Each input batch (see `thresher.harvest.inputs`) becomes exactly one forward and one
ActivationBlock, which carries every hook of the stream side by side (`ActivationBlock.hooks`
names them). Text rows are the windows' content tokens: special tokens ([CLS], [SEP], BOS) and
padding never become rows. Image, EEG and stored backbones make their own rows
(`backbone.harvest(batch)`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thresher.config import ConfigError, SourceConfig
from thresher.harvest.backbones import load_backbone
from thresher.stream.block import ActivationBlock


def load_any_backbone(source: SourceConfig, device: str, base_dir: Path | None = None) -> Any:
    """The backbone of any source kind, in eval mode on `device`."""
    kind = source.backbone.kind
    if kind == "open_clip":
        from thresher.harvest.vision import OpenClipBackbone

        return OpenClipBackbone(source, device)
    if kind == "hf_vision":
        from thresher.harvest.vision import HFVisionBackbone

        return HFVisionBackbone(source, device)
    if kind == "patchtst":
        from thresher.harvest.eeg import PatchTSTBackbone

        return PatchTSTBackbone(source, device)
    if kind == "stored":
        from thresher.harvest.cache import StoredBackbone

        return StoredBackbone(source, base_dir if base_dir is not None else Path.cwd())
    if kind == "synthetic":
        from thresher.harvest.synthetic import SyntheticBackbone

        return SyntheticBackbone(source)
    return load_backbone(source.backbone, source.hooks, device)


class Harvester:
    """Loads the backbone once; turns input batches into activation blocks."""

    def __init__(self, source: SourceConfig, device: str = "cpu",
                 threads: int | None = None, base_dir: str | Path | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.source = source
        self.device = device
        self.base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
        self.text = source.backbone.kind in ("hf_text", "transformer_lens")
        self.backbone = load_any_backbone(source, device, self.base_dir)
        self.unreadable = 0  # images the CPU stage could not decode, summed over batches
        n_ctx = self.backbone.n_ctx
        if self.text and n_ctx is not None and source.inputs.context > n_ctx:
            raise ConfigError(
                f"source.inputs.context is {source.inputs.context} but the backbone takes at "
                f"most {n_ctx} tokens; lower context")
        self.forward_calls = 0
        self.nonfinite_rows = 0  # rows dropped for NaN or Inf, summed over batches
        self.last_nonfinite: tuple[int, ...] = ()  # the examples of the last batch's such rows

    @property
    def d_model(self) -> int:
        return self.backbone.d_model

    @property
    def hook_layout(self) -> tuple[tuple[str, int], ...]:
        """(hook, width) of each column range of the harvested rows."""
        return tuple(zip(self.backbone.hooks, self.backbone.hook_widths, strict=True))

    def harvest(self, batch: dict[str, np.ndarray]) -> ActivationBlock:
        """ONE backbone forward for one input batch, rows for every hook of the stream.

        Rows holding NaN or Inf are dropped here, where every block is made, and counted
        (`nonfinite_rows`, with the examples they came from): one such row would poison every
        SAE of a bank, and dropping it alone keeps the rest of its batch.
        """
        block = dataclasses.replace(self._harvest(batch), hooks=self.hook_layout)
        finite = np.isfinite(block.float32()).all(axis=1)
        if finite.all():
            self.last_nonfinite = ()
            return block
        self.last_nonfinite = tuple(np.unique(block.example_id[~finite]).tolist())
        self.nonfinite_rows += int((~finite).sum())
        return block.take(finite)

    def _harvest(self, batch: dict[str, np.ndarray]) -> ActivationBlock:
        if not self.text:
            if "ref" in batch and "pixels" not in batch:  # not decoded by a CPU stage yet
                from thresher.harvest.vision import decode_images

                batch = decode_images(batch, self.backbone_spec())
            self.unreadable += int(np.sum(batch.get("unreadable", 0)))
            block = self.backbone.harvest(batch)
            self.forward_calls += 1
            return block
        real = np.asarray(batch["example_id"]) >= 0  # filler rows of a short last batch
        example_id = np.asarray(batch["example_id"], dtype=np.int64)[real]
        lengths = np.asarray(batch["lengths"], dtype=np.int64)[real]
        n_prefix = np.asarray(batch["n_prefix"], dtype=np.int64)[real]
        n_suffix = np.asarray(batch["n_suffix"], dtype=np.int64)[real]
        if len(example_id) == 0:
            return ActivationBlock(acts=np.zeros((0, self.d_model), dtype=np.float32),
                                   example_id=np.zeros(0, dtype=np.int64),
                                   position=np.zeros(0, dtype=np.int32))
        width = int(lengths.max())
        tokens = torch.from_numpy(np.asarray(batch["tokens"])[real, :width].astype(np.int64))
        positions = torch.arange(width)
        attention_mask = (positions[None, :] < torch.from_numpy(lengths)[:, None]).long()
        acts = self.backbone.forward(tokens, attention_mask)
        self.forward_calls += 1
        keep = ((positions[None, :] >= torch.from_numpy(n_prefix)[:, None])
                & (positions[None, :] < torch.from_numpy(lengths - n_suffix)[:, None]))
        rows, position = torch.nonzero(keep, as_tuple=True)
        content = acts[keep.to(acts.device)].to("cpu", torch.float32).numpy()
        return ActivationBlock(
            acts=np.ascontiguousarray(content),
            example_id=example_id[rows.numpy()],
            position=position.numpy().astype(np.int32),
        )

    def backbone_spec(self) -> Any:
        from thresher.harvest.vision import image_spec

        return image_spec(self.source, self.base_dir)
