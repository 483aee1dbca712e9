"""Chunker: harvested blocks -> held-out rows, stream statistics, fixed-size training chunks."""

from __future__ import annotations

import numpy as np

from thresher.stream.block import ActivationBlock
from thresher.stream.stats import StreamStats, estimate_hook_stats


class Chunker:
    """Cuts the harvested blocks, in order, into the holdout and fixed-size training chunks.

    The holdout is the first whole blocks reaching `holdout_rows` (whole input batches, so no
    example is split between holdout and training). Training rows are cut into chunks of exactly
    `chunk_rows`; `finish()` flushes the last, shorter one. `wanted_rows` (training rows the
    trainers will consume) lets the pump stop harvesting early.
    """

    def __init__(self, chunk_rows: int, holdout_rows: int, norm_rows: int,
                 wanted_rows: int | None = None) -> None:
        self.chunk_rows = chunk_rows
        self.holdout_rows = holdout_rows
        self.norm_rows = norm_rows
        self.wanted_rows = wanted_rows
        self.holdout: list[ActivationBlock] = []
        self.holdout_count = 0
        self.stats: dict[str, StreamStats] | None = None  # per hook, once norm_rows are in
        self.train_rows = 0  # training rows emitted in chunks
        self.blocks_seen = 0
        self._pending: list[ActivationBlock] = []
        self._pending_rows = 0
        self._norm: list[np.ndarray] = []
        self._norm_rows = 0

    @property
    def done(self) -> bool:
        """True once the chunks emitted cover every training row wanted."""
        return self.wanted_rows is not None and self.train_rows >= self.wanted_rows

    def add(self, block: ActivationBlock) -> list[ActivationBlock]:
        """Take one harvested block; return the training chunks it completes."""
        self.blocks_seen += 1
        if len(block) == 0:
            return []
        if self.holdout_count < self.holdout_rows:
            self.holdout.append(block)
            self.holdout_count += len(block)
            return []
        if self.stats is None:
            self._norm.append(block)
            self._norm_rows += len(block)
            if self._norm_rows >= self.norm_rows:
                self._make_stats()
        self._pending.append(block)
        self._pending_rows += len(block)
        chunks = []
        while self._pending_rows >= self.chunk_rows and not self.done:
            chunks.append(self._cut(self.chunk_rows))
        return chunks

    def finish(self) -> list[ActivationBlock]:
        """End of the harvest: flush the last partial chunk and settle the stream stats."""
        chunks = []
        if self._pending_rows and not self.done:
            chunks.append(self._cut(self._pending_rows))
        if self.stats is None and self._norm:
            self._make_stats()
        if self.stats is None and self.holdout:
            # Everything went to the holdout: estimate from it rather than fail later.
            held = self.holdout_block()
            self.stats = estimate_hook_stats(held.take(slice(0, self.norm_rows)))
        self._pending, self._pending_rows = [], 0
        return chunks

    def holdout_block(self) -> ActivationBlock:
        if not self.holdout:
            raise ValueError("the stream has no held-out rows (stream.holdout_rows is 0)")
        return ActivationBlock.concat(self.holdout)

    def _make_stats(self) -> None:
        rows = ActivationBlock.concat(self._norm).take(slice(0, self.norm_rows))
        self.stats = estimate_hook_stats(rows)
        self._norm = []

    def _cut(self, rows: int) -> ActivationBlock:
        merged = ActivationBlock.concat(self._pending)
        chunk, rest = merged.take(slice(0, rows)), merged.take(slice(rows, None))
        self._pending = [rest] if len(rest) else []
        self._pending_rows = len(rest)
        self.train_rows += len(chunk)
        return chunk
