"""ActivationBlock: the one type that carries activations between stages.

A block is a set of rows, one row per token (text), patch (images) or channel-patch (EEG), with
the metadata that names where each row came from. It crosses process boundaries as plain numpy
columns (``to_columns``/``from_columns``), which the object store holds without pickling
them; torch stays inside the stages.

Columns:
  acts        float32 [rows, d]   (bf16 travels as an int16 view, flagged by ``bf16_bits``)
  example_id  int64   [rows]      index into the stream's inputs manifest (inputs/<stream>.parquet)
  position    int32   [rows]      token / patch index inside the example
  label       int64   [rows]      optional class label (-1 when unknown)

Several hooks, one forward: a stream may carry several hook points of one backbone. Their rows
are the same tokens, so a block holds them side by side in ``acts`` ([rows, d_1 + d_2 + ...])
and ``hook_layout`` names each column range ((name, width), in order). ``select(hook)`` is the
block of one hook, which is what an SAE trains on. Across processes each hook is its own column
(``acts:<hook>``), so a trainer reads only its hook's bytes from the object store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HookLayout = tuple[tuple[str, int], ...]  # (hook name, width) per column range of acts
_HOOK_COLUMN = "acts:"  # transport column prefix of one hook's activations


@dataclass
class ActivationBlock:
    acts: np.ndarray
    example_id: np.ndarray
    position: np.ndarray
    label: np.ndarray | None = None
    bf16_bits: bool = False  # acts holds bfloat16 bit patterns in an int16 array
    hook_layout: HookLayout = ()  # () when the block carries one unnamed hook

    def __post_init__(self) -> None:
        n = len(self.acts)
        if self.acts.ndim != 2:
            raise ValueError(f"acts must be [rows, d], got shape {self.acts.shape}")
        layout = self.hook_layout
        if layout and sum(width for _, width in layout) != self.acts.shape[1]:
            raise ValueError(f"hook widths {layout} do not add up to the {self.acts.shape[1]} "
                             "columns of acts")
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
        if not self.bf16_bits:
            return np.asarray(self.acts, dtype=np.float32)
        bits = np.asarray(self.acts).view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32)

    def hook_span(self, hook: str) -> tuple[int, int]:
        """The column range [start, end) of `hook` in acts."""
        start = 0
        for name, width in self.hook_layout:
            if name == hook:
                return start, start + width
            start += width
        raise KeyError(f"hook {hook!r} is not in this block; it holds "
                       f"{[name for name, _ in self.hook_layout]}")

    def select(self, hook: str | None) -> ActivationBlock:
        """The rows of one hook (the block itself when it carries only that hook)."""
        layout = self.hook_layout
        if hook is None or not layout or (len(layout) == 1 and layout[0][0] == hook):
            return self
        start, end = self.hook_span(hook)
        return ActivationBlock(acts=np.ascontiguousarray(self.acts[:, start:end]),
                               example_id=self.example_id, position=self.position,
                               label=self.label, bf16_bits=self.bf16_bits,
                               hook_layout=((hook, end - start),))

    def to_columns(self) -> dict[str, np.ndarray]:
        if self.hook_layout:
            cols = {f"{_HOOK_COLUMN}{name}": self.select(name).acts for name, _ in self.hook_layout}
        else:
            cols = {"acts": self.acts}
        cols.update({"example_id": self.example_id, "position": self.position})
        if self.label is not None:
            cols["label"] = self.label
        if self.bf16_bits:
            cols["bf16_bits"] = np.ones(len(self), dtype=np.bool_)
        return cols

    @classmethod
    def from_columns(cls, cols: dict[str, np.ndarray],
                     hooks: Sequence[str] | None = None) -> ActivationBlock:
        """The block `to_columns` made; `hooks` picks some of its hooks (and reads only those)."""
        hook_names = [name[len(_HOOK_COLUMN):] for name in cols if name.startswith(_HOOK_COLUMN)]
        if hook_names:
            wanted = list(hooks) if hooks is not None else hook_names
            missing = [h for h in wanted if h not in hook_names]
            if missing:
                raise KeyError(f"hooks {missing} are not in these columns; they hold {hook_names}")
            parts = [_matrix(cols[_HOOK_COLUMN + h]) for h in wanted]
            acts = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
            layout: HookLayout = tuple((h, p.shape[1]) for h, p in zip(wanted, parts, strict=True))
        else:
            acts, layout = _matrix(cols["acts"]), ()
        bf16_bits = "bf16_bits" in cols and len(cols["bf16_bits"]) > 0
        return cls(
            acts=acts,
            example_id=np.asarray(cols["example_id"], dtype=np.int64),
            position=np.asarray(cols["position"], dtype=np.int32),
            label=np.asarray(cols["label"], dtype=np.int64) if "label" in cols else None,
            bf16_bits=bf16_bits,
            hook_layout=layout,
        )

    def take(self, index: np.ndarray | slice) -> ActivationBlock:
        return ActivationBlock(
            acts=self.acts[index],
            example_id=self.example_id[index],
            position=self.position[index],
            label=None if self.label is None else self.label[index],
            bf16_bits=self.bf16_bits,
            hook_layout=self.hook_layout,
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
            bf16_bits=blocks[0].bf16_bits,
            hook_layout=blocks[0].hook_layout,
        )


def _matrix(column: np.ndarray) -> np.ndarray:
    acts = np.asarray(column)
    if acts.ndim == 1:  # a zero-row column may come back flattened
        acts = acts.reshape(0, 0)
    return acts
