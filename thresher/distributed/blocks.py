"""Harvested blocks in Ray's object store, read without copies.

Ray Data keeps each harvest output as an Arrow table (one tensor column per hook, `acts:<hook>`,
beside example_id / position / label). A trainer reads only its hook's column, zero-copy from the
object store; the only copy of a row on its way to the trainer's tensor is the gather into its
batch group (`thresher.stream.reader.gather_group`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from thresher.stream.block import ActivationBlock
from thresher.stream.chunker import Piece, load_pieces
from thresher.stream.stats import StreamStats, estimate_hook_stats

_HOOK = "acts:"


def _column(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    if column.num_chunks == 1:
        chunk = column.chunk(0)
        # A tensor column of Ray Data's extension type, or a plain Arrow column.
        return (chunk.to_numpy(zero_copy_only=True) if isinstance(chunk, pa.ExtensionArray)
                else chunk.to_numpy(zero_copy_only=False))
    return np.concatenate([_column(pa.table({name: c}), name) for c in column.chunks])


def block_from_table(table: Any, hooks: Sequence[str] | None = None) -> ActivationBlock:
    """The ActivationBlock of one harvest output (its `hooks` only: the others are not read)."""
    if isinstance(table, dict):  # numpy columns (e.g. an object put by hand)
        return ActivationBlock.from_columns(table, hooks=hooks)
    names = table.column_names
    held = [n[len(_HOOK):] for n in names if n.startswith(_HOOK)]
    wanted = [f"{_HOOK}{h}" for h in (hooks if hooks is not None else held)] if held else ["acts"]
    columns = {name: _column(table, name) for name in wanted}
    for name in ("example_id", "position", "label", "bf16"):
        if name in names:
            columns[name] = _column(table, name)
    return ActivationBlock.from_columns(columns, hooks=hooks if held else None)


def load_blocks(refs: Sequence[Any], hook: str | None = None) -> list[ActivationBlock]:
    """The blocks behind object refs, one hook's columns each (every hook without `hook`)."""
    import ray

    return [block_from_table(t, None if hook is None else [hook]) for t in ray.get(list(refs))]


def estimate_stats(pieces: list[Piece[Any]]) -> dict[str, StreamStats]:
    """The stream statistics from the normalisation rows (a Ray task: the pump never reads
    rows)."""
    return estimate_hook_stats(load_pieces(pieces, load_blocks))
