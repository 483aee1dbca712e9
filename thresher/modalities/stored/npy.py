"""A folder of .npy shards as an activation store: ``<stem>.npy`` holds acts [rows, d] (sorted
by name); optional ``<stem>.example_id.npy``, ``<stem>.position.npy``, ``<stem>.label.npy`` hold
the metadata (absent: example_id = global row index, position 0) and an optional
``header.json`` the hook."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from thresher.modalities.stored.errors import StoreError
from thresher.stream.block import ActivationBlock

_SHARD_META = ("example_id", "position", "label")
_SHARD_SUFFIXES = tuple(f".{name}.npy" for name in _SHARD_META)


class NpyShardStore:
    """A folder of .npy shards (acts [rows, d] per file, optional metadata siblings)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # Every .npy but the metadata siblings: a shard may have dots in its name (layer.3.npy).
        self.shards = sorted(p for p in self.path.glob("*.npy")
                             if not p.name.endswith(_SHARD_SUFFIXES))
        if not self.shards:
            raise StoreError(f"{str(self.path)!r} holds no .npy shard (<name>.npy, acts of shape "
                             "[rows, d])")
        header = self.path / "header.json"
        self.header: dict[str, Any] = json.loads(header.read_text()) if header.is_file() else {}
        self.hook = str(self.header.get("hook", ""))
        self.hooks: tuple[tuple[str, int], ...] = ()
        self.n_blocks = len(self.shards)
        self.bf16 = False
        self._offsets = [0]
        first: tuple[Path, int] | None = None
        for shard in self.shards:  # headers only (memory-mapped): cheap for every shard
            acts = self._load(shard, mmap=True)
            if acts.ndim != 2:
                raise StoreError(f"shard {str(shard)!r} has shape {acts.shape}, not [rows, d]; "
                                 "save each shard as a 2-D array of activations")
            if acts.dtype.kind != "f":
                raise StoreError(f"shard {str(shard)!r} holds {acts.dtype}, not floats; save "
                                 "it with a float dtype (float32)")
            if first is None:
                first = (shard, int(acts.shape[1]))
            elif acts.shape[1] != first[1]:
                raise StoreError(f"shard {str(shard)!r} has width {acts.shape[1]} but "
                                 f"{str(first[0])!r} has {first[1]}: every shard of a store "
                                 "holds one hook's width; rewrite or remove the odd one")
            self._offsets.append(self._offsets[-1] + len(acts))
        assert first is not None
        self.d = first[1]

    @staticmethod
    def _load(path: Path, mmap: bool = False) -> np.ndarray:
        try:
            return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
        except (ValueError, OSError, EOFError) as exc:
            raise StoreError(f"shard {str(path)!r} is corrupt or truncated ({exc})") from exc

    def block(self, i: int) -> ActivationBlock:
        shard = self.shards[i]
        acts = np.asarray(self._load(shard), dtype=np.float32)
        n = len(acts)
        columns: dict[str, np.ndarray] = {}
        for name in _SHARD_META:
            side = shard.with_name(f"{shard.stem}.{name}.npy")
            if side.is_file():
                columns[name] = self._load(side)
                if len(columns[name]) != n:
                    raise StoreError(f"{str(side)!r} has {len(columns[name])} rows but its "
                                     f"shard has {n}")
        return ActivationBlock(
            acts=acts,
            example_id=columns.get("example_id",
                                   np.arange(self._offsets[i], self._offsets[i] + n)),
            position=columns.get("position", np.zeros(n, dtype=np.int32)),
            label=columns.get("label"))

    @property
    def n_rows(self) -> int:
        return int(self._offsets[-1])

    def manifest(self) -> pa.Table | None:
        return None

    def close(self) -> None:
        pass
