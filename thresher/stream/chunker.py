"""Chunker: harvested blocks -> held-out blocks, normalisation rows, fixed-size training chunks.

The chunker never looks at activations: it knows each harvested block by a handle (the block
itself inline, an object ref on Ray) and its row count, and describes what it cuts as pieces of
those blocks. Rows are copied only where a trainer gathers a batch group (`reader.gather_group`),
so the process that runs the pump never holds a chunk's bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic

from thresher.stream.block import ActivationBlock
from thresher.stream.log import Handle


@dataclass(frozen=True)
class Piece(Generic[Handle]):
    """Rows [start, stop) of one harvested block."""

    block: Handle
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Chunk(Generic[Handle]):
    """One training chunk: consecutive stream rows, as pieces of harvested blocks."""

    pieces: tuple[Piece[Handle], ...]

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.pieces)


class Chunker(Generic[Handle]):
    """Cuts the harvested blocks, in order, into the holdout and fixed-size training chunks.

    The holdout is the first whole blocks reaching `holdout_rows` (whole input batches, so no
    example is split between holdout and training). The first `norm_rows` training rows are
    also kept as `norm` pieces, for the stream statistics. Training rows are cut into chunks of
    exactly `chunk_rows`; `finish()` flushes the last, shorter one. `wanted_rows` (training rows
    the trainers will consume) lets the pump stop harvesting early.
    """

    def __init__(self, chunk_rows: int, holdout_rows: int, norm_rows: int,
                 wanted_rows: int | None = None) -> None:
        self.chunk_rows = chunk_rows
        self.holdout_rows = holdout_rows
        self.norm_rows = norm_rows
        self.wanted_rows = wanted_rows
        self.holdout: list[Piece[Handle]] = []  # whole blocks
        self.holdout_count = 0
        self.norm: list[Piece[Handle]] = []  # the normalisation rows, once complete or final
        self.norm_ready = False
        self.train_rows = 0  # training rows emitted in chunks
        self._pending: list[Piece[Handle]] = []
        self._pending_rows = 0
        self._norm_rows = 0

    @property
    def done(self) -> bool:
        """True once the chunks emitted cover every training row wanted."""
        return self.wanted_rows is not None and self.train_rows >= self.wanted_rows

    def add(self, block: Handle, rows: int) -> list[Chunk[Handle]]:
        """Take one harvested block of `rows` rows; return the training chunks it completes."""
        if rows == 0:
            return []
        if self.holdout_count < self.holdout_rows:
            self.holdout.append(Piece(block, 0, rows))
            self.holdout_count += rows
            return []
        if not self.norm_ready:
            take = min(rows, self.norm_rows - self._norm_rows)
            self.norm.append(Piece(block, 0, take))
            self._norm_rows += take
            self.norm_ready = self._norm_rows >= self.norm_rows
        self._pending.append(Piece(block, 0, rows))
        self._pending_rows += rows
        chunks = []
        while self._pending_rows >= self.chunk_rows and not self.done:
            chunks.append(self._cut(self.chunk_rows))
        return chunks

    def finish(self) -> list[Chunk[Handle]]:
        """End of the harvest: flush the last partial chunk and settle the normalisation rows."""
        chunks = []
        if self._pending_rows and not self.done:
            chunks.append(self._cut(self._pending_rows))
        if not self.norm and self.holdout_count:
            # Everything went to the holdout: estimate from its first rows rather than fail.
            self.norm = self._first_rows(self.holdout, self.norm_rows)
        self.norm_ready = True
        self._pending, self._pending_rows = [], 0
        return chunks

    def _cut(self, rows: int) -> Chunk[Handle]:
        taken: list[Piece[Handle]] = []
        need = rows
        while need:
            piece = self._pending[0]
            if piece.rows <= need:
                taken.append(self._pending.pop(0))
                need -= piece.rows
            else:
                taken.append(Piece(piece.block, piece.start, piece.start + need))
                self._pending[0] = Piece(piece.block, piece.start + need, piece.stop)
                need = 0
        self._pending_rows -= rows
        self.train_rows += rows
        return Chunk(tuple(taken))

    @staticmethod
    def _first_rows(pieces: Sequence[Piece[Handle]], rows: int) -> list[Piece[Handle]]:
        out, need = [], rows
        for p in pieces:
            if need <= 0:
                break
            out.append(Piece(p.block, p.start, p.start + min(p.rows, need)))
            need -= out[-1].rows
        return out


def load_pieces(pieces: Sequence[Piece[Handle]],
                load: Callable[[Sequence[Handle]], Sequence[ActivationBlock]]) -> ActivationBlock:
    """The rows of `pieces`, in order, as one block (`load` turns handles into blocks)."""
    blocks = load([p.block for p in pieces])
    parts = [b.take(slice(p.start, p.stop)) for p, b in zip(pieces, blocks, strict=True)]
    return ActivationBlock.concat(parts)

