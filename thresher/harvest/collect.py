"""Harvest a stream's rows into memory with the plain classes (no Ray, no training).

For baselines and checks that need the very rows the SAEs saw: the held-out rows and the
training rows in stream order, cut exactly as the pump cuts them.
"""

from __future__ import annotations

from thresher.config import Config, config_dir, torch_threads
from thresher.harvest.harvester import Harvester
from thresher.harvest.inputs import decode_batch, prepare_inputs
from thresher.stream.block import ActivationBlock
from thresher.stream.chunker import Chunker


def collect_stream(cfg: Config, stream: str | None = None
                   ) -> tuple[ActivationBlock, ActivationBlock]:
    """(held-out rows, training rows) of a stream (the only one by default), every hook side by
    side, as a run would cut them."""
    source = cfg.source_named(stream) if stream is not None else cfg.source
    inputs = prepare_inputs(source, cfg.run.seed, config_dir(cfg))
    harvester = Harvester(source, threads=torch_threads(cfg, "harvester"),
                          base_dir=config_dir(cfg))
    steps = -(-cfg.train.tokens // cfg.train.batch_size)
    chunker = Chunker(cfg.stream.chunk_rows, cfg.stream.holdout_rows, cfg.stream.norm_rows,
                      wanted_rows=steps * cfg.train.batch_size)
    chunks: list[ActivationBlock] = []
    for batch in inputs.batches:
        if chunker.done:
            break
        chunks += chunker.add(harvester.harvest(decode_batch(inputs, batch)))
    chunks += chunker.finish()
    return chunker.holdout_block(), ActivationBlock.concat(chunks)
