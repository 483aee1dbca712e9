"""The harvest on Ray: a fixed pool of harvester actors fed the stream's input batches in order.

Each `HarvestWorker` actor holds one Harvester (one backbone) and turns one input batch into
one ActivationBlock per call. The block stays in the object store of the harvester's node,
owned by the stream actor that submitted the call; the stream actor receives only its ref and a
small `HarvestReport` (forwards, examples, unreadable inputs, dropped rows), so the pump never
reads a row. Images are decoded and preprocessed by CPU tasks ahead of the backbone actors.

A pool of our own rather than Ray Data's: its actors take small constructor arguments (config
values, never objects in the store), so Ray can restart a lost one and retry its calls without
warning about store-held arguments; at most `in_flight` batches are out at once (the store
holds that many blocks besides the log); outputs are taken in input order (the same chunks on
every run); and nothing is running when the pool is stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from thresher.config import ConfigError, SourceConfig
from thresher.harvest.report import Harvested, HarvestReport
from thresher.modalities.contract import Decoder, InputBatch

log = logging.getLogger(__name__)

# A marker amount of a node-type resource: it pins an actor to the nodes that declare the
# resource (cluster.yaml gives each such node 1 unit) and never limits how many actors fit.
NODE_MARKER = 0.001
# The label Ray gives every node, its node id: a label selector on it places work on one node.
NODE_ID_LABEL = "ray.io/node-id"


class HarvestWorker:
    """A Harvester in one actor, on the GPU Ray gave it."""

    def __init__(self, source: SourceConfig, gpus: float, threads: int, base_dir: str) -> None:
        # Loading a backbone draws the hub's per-file progress bars, which a healthy run
        # should not forward to the driver's terminal from every harvester (set before the
        # hub is imported; a runtime env would cost the actor a worker started ahead).
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from thresher.devices import torch_device
        from thresher.harvest.harvester import Harvester

        self.failure: ConfigError | None = None
        try:
            device = torch_device(gpus, source.backbone.device, role="harvester")
            self.harvester = Harvester(source, device=device, threads=threads,
                                       base_dir=base_dir)
        except ConfigError as exc:
            # Raised from the first call instead: Ray hands a call's error on as is, but
            # keeps only the text of a failed constructor.
            self.failure = exc

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def harvest(self, batch: InputBatch
                ) -> tuple[tuple[HarvestReport, int], dict[str, np.ndarray]]:
        """(the block's report and bytes, the block as columns: one array per hook, so a
        trainer maps only its hook's rows out of the store). Called with two returns, so the
        columns stay in the store while the caller fetches the small first."""
        if self.failure is not None:
            raise self.failure
        block, report = self.harvester.harvest_reported(batch)
        columns = block.to_columns()
        # Ray writes the columns into the object store (one copy of each row), after
        # to_columns gave each of several hooks a contiguous array of its own (another).
        split = 1 if len(block.hook_layout) > 1 else 0
        report = dataclasses.replace(report, row_copies=report.row_copies + 1 + split)
        return (report, sum(column.nbytes for column in columns.values())), columns


def harvest_worker_class() -> Any:
    """`HarvestWorker` as a Ray actor class that Ray restarts, retrying its calls."""
    import ray

    return ray.remote(max_restarts=-1, max_task_retries=-1)(HarvestWorker)


def _decode(decoder: Decoder, batch: InputBatch) -> InputBatch:
    return decoder.decode(batch)


@functools.cache
def decode_task() -> Any:
    """The CPU task that decodes and preprocesses one input batch (image references)."""
    import ray

    return ray.remote(num_cpus=1)(_decode)


class HarvestPool:
    """Harvester actors over a sequence of input batches, at most `in_flight` out at once.

    The actors start on construction, so their imports and model loading overlap whatever the
    caller does before `harvest` (the stream actor prepares the inputs: tokenizing a corpus
    takes as long as starting a backbone). `harvest` submits batches as outputs are taken and
    yields them in input order; each batch goes to the actor with the fewest calls out.
    `options` are the actors' Ray options (resources, placement)."""

    def __init__(self, source: SourceConfig, *, actors: int, in_flight: int, gpus: float,
                 threads: int, base_dir: str, options: dict[str, Any] | None = None) -> None:
        worker = harvest_worker_class().options(**(options or {}))
        self.actors = [worker.remote(source, gpus, threads, base_dir) for _ in range(actors)]
        self.in_flight = max(in_flight, 1)
        self.out: deque[tuple[int, Any, Any]] = deque()  # (actor, report ref, block ref)
        self.calls = [0] * actors  # calls out per actor

    @property
    def actors_n(self) -> int:
        return len(self.actors)

    def node_ids(self) -> set[str]:
        """The nodes the harvesters run on."""
        import ray

        return set(ray.get([actor.node_id.remote() for actor in self.actors]))

    def _submit(self, batch: Any, decode: Decoder | None) -> None:
        if decode is not None:
            batch = decode_task().remote(decode, batch)  # the actor waits for its pixels
        i = min(range(len(self.actors)), key=lambda a: (self.calls[a], a))
        report, block = self.actors[i].harvest.options(num_returns=2).remote(batch)
        self.out.append((i, report, block))
        self.calls[i] += 1

    def harvest(self, batches: Sequence[InputBatch], decode: Decoder | None = None
                ) -> Iterator[Harvested[Any]]:
        """The blocks of `batches`, in their order (decoded first by CPU tasks with `decode`)."""
        import ray

        submitted = 0
        while self.out or submitted < len(batches):
            while len(self.out) < self.in_flight and submitted < len(batches):
                self._submit(batches[submitted], decode)
                submitted += 1
            i, head, block = self.out.popleft()
            self.calls[i] -= 1
            report, block_bytes = ray.get(head)
            yield Harvested(block=block, report=report, store_bytes=block_bytes)

    def stop(self, timeout: float = 60.0) -> None:
        """Let the calls out finish (a harvest stopped early has a few), then end the actors:
        a call killed midway would only leave an error behind for Ray to print."""
        import ray

        pending = [ref for _, head, block in self.out for ref in (head, block)]
        if pending:
            ray.wait(pending, num_returns=len(pending), timeout=timeout)
        self.out.clear()
        for actor in self.actors:
            ray.kill(actor)
