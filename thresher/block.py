"""ActivationBlock: the one type that carries activations between stages.

A block is a set of rows, one row per token (text), patch (images) or channel-patch (EEG), with
the metadata that names where each row came from. It crosses process boundaries as plain numpy
columns (``to_columns``/``from_columns``), which is what Ray Data and the object store move
cheaply; torch stays inside the stages.

Columns:
  acts        float32 [rows, d]   (bf16 travels as an int16 view, flagged by ``bf16``)
  example_id  int64   [rows]      index into the run's inputs manifest (inputs.parquet)
  position    int32   [rows]      token / patch index inside the example
  label       int64   [rows]      optional class label (-1 when unknown)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ActivationBlock:
    acts: np.ndarray
    example_id: np.ndarray
    position: np.ndarray
    label: np.ndarray | None = None
    bf16: bool = False  # acts holds bfloat16 bits in an int16 array

    def __post_init__(self) -> None:
        n = len(self.acts)
        if self.acts.ndim != 2:
            raise ValueError(f"acts must be [rows, d], got shape {self.acts.shape}")
        for name in ("example_id", "position", "label"):
            col = getattr(self, name)
            if col is not None and len(col) != n:
                raise ValueError(f"{name} has {len(col)} rows but acts has {n}")

    def __len__(self) -> int:
        return len(self.acts)

    @property
    def d(self) -> int:
        return int(self.acts.shape[1])

    def float32(self) -> np.ndarray:
        """The activations as float32 (decoding the bf16 view if needed)."""
        if not self.bf16:
            return np.asarray(self.acts, dtype=np.float32)
        bits = np.asarray(self.acts).view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32)

    def to_columns(self) -> dict[str, np.ndarray]:
        cols = {"acts": self.acts, "example_id": self.example_id, "position": self.position}
        if self.label is not None:
            cols["label"] = self.label
        if self.bf16:
            cols["bf16"] = np.ones(len(self), dtype=np.bool_)
        return cols

    @classmethod
    def from_columns(cls, cols: dict[str, np.ndarray]) -> ActivationBlock:
        acts = np.asarray(cols["acts"])
        if acts.ndim == 1:  # Ray Data hands back an object column when it holds zero rows
            acts = acts.reshape(0, 0)
        bf16 = "bf16" in cols and len(cols["bf16"]) > 0
        return cls(
            acts=acts,
            example_id=np.asarray(cols["example_id"], dtype=np.int64),
            position=np.asarray(cols["position"], dtype=np.int32),
            label=np.asarray(cols["label"], dtype=np.int64) if "label" in cols else None,
            bf16=bf16,
        )

    def take(self, index: np.ndarray | slice) -> ActivationBlock:
        return ActivationBlock(
            acts=self.acts[index],
            example_id=self.example_id[index],
            position=self.position[index],
            label=None if self.label is None else self.label[index],
            bf16=self.bf16,
        )

    @staticmethod
    def concat(blocks: list[ActivationBlock]) -> ActivationBlock:
        if not blocks:
            raise ValueError("cannot concatenate zero blocks")
        if len(blocks) == 1:
            return blocks[0]
        labels = [b.label for b in blocks]
        return ActivationBlock(
            acts=np.concatenate([b.acts for b in blocks]),
            example_id=np.concatenate([b.example_id for b in blocks]),
            position=np.concatenate([b.position for b in blocks]),
            label=None if any(lab is None for lab in labels) else np.concatenate(labels),
            bf16=blocks[0].bf16,
        )
