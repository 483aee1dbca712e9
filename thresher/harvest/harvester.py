"""The harvester: one backbone forward per input batch, content-token rows out.

`Harvester` is a plain class; Ray Data runs it as the `map_batches` UDF of a fixed actor pool
(`__call__`), the inline executor calls `harvest` directly. Each input batch (see
`thresher.harvest.inputs`) becomes exactly one forward and one ActivationBlock whose rows are
the windows' content tokens: special tokens ([CLS], [SEP], BOS) and padding never become rows.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch

from thresher.block import ActivationBlock
from thresher.config import ConfigError, SourceConfig
from thresher.harvest.backbones import load_backbone


class Harvester:
    """Loads the backbone once; turns input batches into activation blocks."""

    def __init__(self, source: SourceConfig, device: str = "cpu",
                 threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.source = source
        self.device = device
        self.backbone = load_backbone(source.backbone, source.hook, device)
        n_ctx = self.backbone.n_ctx
        if n_ctx is not None and source.inputs.context > n_ctx:
            raise ConfigError(
                f"source.inputs.context is {source.inputs.context} but the backbone takes at "
                f"most {n_ctx} tokens; lower context")
        self.forward_calls = 0
        # Forward-call ids are unique across actors: a random actor nonce above a local count.
        self._nonce = secrets.randbits(31)

    @property
    def d_model(self) -> int:
        return self.backbone.d_model

    def harvest(self, batch: dict[str, np.ndarray]) -> ActivationBlock:
        """ONE backbone forward for one input batch; rows are its content tokens, row-major."""
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

    def __call__(self, items: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data UDF: each item is one input batch; one forward per item.

        Adds `forward_call` (int64 per row), unique to the forward that made the row across all
        actors, so the pump can count forward calls.
        """
        n_items = len(items["example_id"])
        blocks, calls = [], []
        for i in range(n_items):
            block = self.harvest({name: column[i] for name, column in items.items()})
            blocks.append(block)
            call_id = (self._nonce << 32) | self.forward_calls
            calls.append(np.full(len(block), call_id, dtype=np.int64))
        if not blocks:
            block = ActivationBlock(acts=np.zeros((0, self.d_model), dtype=np.float32),
                                    example_id=np.zeros(0, dtype=np.int64),
                                    position=np.zeros(0, dtype=np.int32))
        else:
            block = ActivationBlock.concat(blocks)
        columns = block.to_columns()
        columns["forward_call"] = (np.concatenate(calls) if calls
                                   else np.zeros(0, dtype=np.int64))
        return columns
