"""Harvested blocks in Ray's object store, read without copies.

A harvester returns each block as its columns (`ActivationBlock.to_columns`: one array per
hook, `acts:<hook>`, beside example_id / position / label), which Ray stores as one buffer per
array. A trainer maps only its hook's array out of the store, zero-copy; the only copy of a row
on its way to the trainer's tensor is the gather into its batch group
(`thresher.stream.reader.gather_group`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from thresher.stream.block import ActivationBlock
from thresher.stream.chunker import Piece, load_pieces
from thresher.stream.stats import StreamStats, estimate_hook_stats


def load_blocks(refs: Sequence[Any], hook: str | None = None) -> list[ActivationBlock]:
    """The blocks behind object refs, one hook's columns each (every hook without `hook`)."""
    import ray

    hooks = None if hook is None else [hook]
    return [ActivationBlock.from_columns(columns, hooks=hooks) for columns in ray.get(list(refs))]


def estimate_stats(pieces: list[Piece[Any]]) -> dict[str, StreamStats]:
    """The stream statistics from the normalisation rows (a Ray task: the pump never reads
    rows)."""
    return estimate_hook_stats(load_pieces(pieces, load_blocks))
