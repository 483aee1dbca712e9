"""The Ray Data UDF that harvests: one Harvester per pool actor, one forward per input batch.

Its output rows stay where they were computed: Ray Data stores each output as one block in the
object store of the harvester's node, owned by the process that runs the Ray Data pipeline (the
stream actor). What the stream actor needs to know about a block besides its row count (the
forwards, examples and unreadable inputs behind it) the worker tells it directly, by batch
index, before returning the block, so the pump never has to read one.
"""

from __future__ import annotations

import logging

import numpy as np

from thresher.config import ConfigError, SourceConfig
from thresher.harvest.local import report_of
from thresher.stream.block import ActivationBlock

log = logging.getLogger(__name__)

# A marker amount of a node-type resource: it pins an actor to the nodes that declare the
# resource (cluster.yaml gives each such node 1 unit) and never limits how many actors fit.
NODE_MARKER = 0.001
# The label Ray gives every node, its node id: a label selector on it places work on one node.
NODE_ID_LABEL = "ray.io/node-id"
BATCH_INDEX = "batch_index"  # the input column naming each input batch's place in the stream


class HarvestWorker:
    """A Harvester in one pool actor, on the GPU Ray gave it."""

    def __init__(self, source: SourceConfig, gpus: float, threads: int, base_dir: str,
                 stream_actor: str) -> None:
        import ray

        from thresher.devices import torch_device
        from thresher.harvest.harvester import Harvester

        # By name: a handle among the constructor arguments would pin them in the object store.
        self.stream = ray.get_actor(stream_actor)
        self.failure: ConfigError | None = None
        try:
            device = torch_device(gpus, source.backbone.device, role="harvester")
            self.harvester = Harvester(source, device=device, threads=threads, base_dir=base_dir)
        except ConfigError as exc:
            # Raised from the first call instead: Ray keeps a task's error as an object the
            # pump can hand on, but only the text of a failed actor constructor.
            self.failure = exc

    def __call__(self, items: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ray

        if self.failure is not None:
            raise self.failure
        blocks, reports = [], {}
        for i in range(len(items[BATCH_INDEX])):
            batch = self.harvester.batch_type.from_columns(
                {name: column[i] for name, column in items.items()})
            before, dropped = self.harvester.unreadable, self.harvester.nonfinite_rows
            block = self.harvester.harvest(batch)
            blocks.append(block)
            reports[int(items[BATCH_INDEX][i])] = report_of(self.harvester, block, before,
                                                            dropped)
        # Told before the block exists, so the stream actor knows it when the block arrives.
        ray.get(self.stream.harvested.remote(reports))
        out = blocks[0] if len(blocks) == 1 else ActivationBlock.concat(blocks)
        return out.to_columns()
