"""The in-process harvest: a stream's inputs through one Harvester, one forward per batch.

The one harvest loop of every consumer that runs in a single process: the inline executor,
`thresher harvest` (the activation cache), `analyze`'s held-out rows and the baselines. The Ray
executor runs the same Harvester per input batch in each of its harvester actors instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from thresher.config import Config, SourceConfig, config_dir, torch_threads
from thresher.harvest.harvester import Harvester
from thresher.harvest.inputs import decode_batch, prepare_inputs
from thresher.harvest.report import Harvested
from thresher.modalities.contract import Inputs
from thresher.stream.block import ActivationBlock
from thresher.stream.chunker import Chunker, load_pieces
from thresher.stream.pump import stream_chunker


class LocalHarvest:
    """A source's inputs and backbone in this process; iterating harvests them in order."""

    def __init__(self, cfg: Config, source: SourceConfig, device: str = "cpu",
                 inputs: Inputs | None = None) -> None:
        self.source = source
        self.inputs = inputs or prepare_inputs(source, cfg.run.seed, config_dir(cfg))
        self.harvester = Harvester(source, device=device,
                                   threads=torch_threads(cfg, "harvester", source),
                                   base_dir=config_dir(cfg))

    def __iter__(self) -> Iterator[Harvested[ActivationBlock]]:
        for item in self.inputs.batches:
            # The CPU stage, then the forward.
            yield Harvested(*self.harvester.harvest_reported(decode_batch(self.inputs, item)))


def _themselves(blocks: Sequence[ActivationBlock]) -> list[ActivationBlock]:
    """`load` where a block's handle is the block itself."""
    return list(blocks)


def collect_rows(cfg: Config, source: SourceConfig, training_rows: bool = True
                 ) -> tuple[ActivationBlock, ActivationBlock | None]:
    """(held-out rows, training rows in stream order) of a source, every hook side by side,
    cut exactly as a run cuts them; only the held-out rows are harvested without
    `training_rows`."""
    s = cfg.stream
    chunker: Chunker[ActivationBlock] = stream_chunker(cfg)  # the pump's, so cut as a run cuts
    chunks = []
    for harvested in LocalHarvest(cfg, source):
        if chunker.done if training_rows else chunker.holdout_count >= s.holdout_rows:
            break
        chunks += chunker.add(harvested.block, len(harvested.block))
    chunks += chunker.finish()
    if not chunker.holdout:
        raise ValueError("the stream has no held-out rows (stream.holdout_rows is 0)")
    holdout = load_pieces(chunker.holdout, _themselves)
    if not training_rows:
        return holdout, None
    pieces = [p for chunk in chunks for p in chunk.pieces]
    return holdout, load_pieces(pieces, _themselves)
