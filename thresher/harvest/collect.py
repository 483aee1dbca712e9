"""A stream's rows in memory, harvested in this process (no Ray, no training).

For baselines and checks that need the very rows the SAEs saw: the held-out rows and the
training rows in stream order, cut exactly as the pump cuts them.
"""

from __future__ import annotations

from thresher.config import Config
from thresher.harvest.local import collect_rows
from thresher.stream.block import ActivationBlock


def collect_stream(cfg: Config, stream: str | None = None
                   ) -> tuple[ActivationBlock, ActivationBlock]:
    """(held-out rows, training rows) of a stream (the only one by default), every hook side by
    side, as a run would cut them."""
    source = cfg.source_named(stream) if stream is not None else cfg.source
    holdout, train = collect_rows(cfg, source)
    assert train is not None
    return holdout, train


def collect_holdout(cfg: Config, stream: str | None = None) -> ActivationBlock:
    """A stream's held-out rows (every hook of it), harvested again exactly as the run cut
    them; nothing past them is harvested."""
    source = cfg.source_named(stream) if stream is not None else cfg.source
    return collect_rows(cfg, source, training_rows=False)[0]
