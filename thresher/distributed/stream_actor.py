"""The pump: harvested blocks in, chunk handles into the broadcast log.

`Pump` is the plain logic (Chunker + BroadcastLog + counters), used as is by the inline
executor. `StreamActor` places it on Ray: it builds the inputs, runs the Ray Data harvest
(`map_batches` on a fixed `ActorPoolStrategy`), `ray.put`s each chunk — so it owns the chunks —
and serves the log to the trainer actors. It is a threaded actor: the harvest loop runs in one
call while trainers read groups and commit cursors in others.

Placement: the driver puts the StreamActor on a harvest node (a node declaring
`resources.harvest_node_resource`, where the cluster has one); the harvester pool asks for the
same marker resource and, softly, for the StreamActor's own node, so chunks are put where they
were computed. Ray Data's object-store budget is set explicitly (`StoreBudget`), and the log's
worst case is checked against the node's object store before the first chunk is put.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from thresher import storage
from thresher.config import (
    Config,
    ConfigError,
    SourceConfig,
    StreamPlan,
    harvest_resources,
    torch_threads,
)
from thresher.distributed.errors import user_error
from thresher.stream.block import ActivationBlock
from thresher.stream.budget import MIB, StoreBudget, row_bytes, store_budget
from thresher.stream.log import Cursor, Group
from thresher.stream.pump import Pump
from thresher.stream.stats import StreamStats

log = logging.getLogger(__name__)

# A marker amount of a node-type resource: it pins an actor to the nodes that declare the
# resource (cluster.yaml gives each such node 1 unit) and never limits how many actors fit.
NODE_MARKER = 0.001
# The label Ray gives every node, its node id: a label selector on it places work on one node.
NODE_ID_LABEL = "ray.io/node-id"


def node_tag(node_id: str) -> int:
    """A node id as an int64 column value (its first 60 bits: unique among a cluster's nodes)."""
    return int(node_id[:15], 16)


class HarvestWorker:
    """The Ray Data UDF: a Harvester in one pool actor, on the GPU Ray gave it, tagging each
    row with the node that harvested it (so the run records where harvesting happened)."""

    def __init__(self, source: SourceConfig, gpus: float, threads: int, base_dir: str) -> None:
        import ray
        import torch

        from thresher.harvest.harvester import Harvester

        # Decided here, in the actor: only it sees the devices Ray assigned to it.
        device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
        if gpus > 0 and device == "cpu":
            log.warning("harvester: %g GPU requested but torch sees no CUDA device; using CPU",
                        gpus)
        self.node = node_tag(ray.get_runtime_context().get_node_id())
        self.failure: ConfigError | None = None
        try:
            self.harvester = Harvester(source, device=device, threads=threads, base_dir=base_dir)
        except ConfigError as exc:
            # Raised from the first call instead: Ray keeps a task's error as an object the
            # pump can hand on, but only the text of a failed actor constructor.
            self.failure = exc

    def __call__(self, items: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.failure is not None:
            raise self.failure
        columns = self.harvester(items)
        columns["harvest_node"] = np.full(len(columns["forward_call"]), self.node, np.int64)
        return columns



# What a trainer gets from StreamActor.group: ("ready", Group), ("wait", log_full), ("end", None)
GroupReply = tuple[str, Any]


def _stream_actor_cls() -> Any:
    import ray

    @ray.remote(num_cpus=0, max_concurrency=16)
    class StreamActor:
        """Pump + broadcast log of one stream, on the harvest node; owns every chunk it puts."""

        def __init__(self, cfg: Config, stream: StreamPlan, run_dir: str,
                     streams_at_once: int = 1,
                     harvest_resources: dict[str, float] | None = None) -> None:
            self.cfg, self.stream = cfg, stream
            # The run's location (a URI reaches this node's working copy of it).
            self.run_dir = str(storage.working_dir(run_dir))
            self.lock = threading.Condition()
            self.pump: Pump[Any] = Pump(cfg, stream, put=lambda b: ray.put(b.to_columns()))
            self.error: str | None = None
            self.failure: BaseException | None = None  # a user error trainers re-raise as is
            self.progress_steps: dict[str, int] = {t.trainer_id: 0 for t in stream.trainers}
            self.holdout_ref: Any = None
            self.planned_rows = 0
            self.node_id = ray.get_runtime_context().get_node_id()
            self.streams_at_once = streams_at_once
            self.harvest_resources = dict(harvest_resources or {})
            self.budget: StoreBudget | None = None
            self.harvest_nodes: set[int] = set()
            # Trainer restarts: each start after the first records where the trainer resumed
            # and the last step it had reported, i.e. the steps it has to redo.
            self.trainer_starts: dict[str, int] = {t.trainer_id: 0 for t in stream.trainers}
            self.restarts: dict[str, list[dict[str, int]]] = {
                t.trainer_id: [] for t in stream.trainers}

        def harvest(self) -> dict[str, Any]:
            """Run the whole harvest; returns the harvest counters. Trainers read meanwhile."""
            try:
                return self._harvest()
            except BaseException as exc:  # surface to trainers waiting on the log
                cause = user_error(exc)
                with self.lock:
                    self.error = f"{type(cause or exc).__name__}: {cause or exc}"
                    self.failure = cause
                    self.lock.notify_all()
                if cause is not None and cause is not exc:
                    raise cause from None  # the message the user can act on, not Ray's wrapping
                raise

        def _harvest(self) -> dict[str, Any]:
            from thresher.config import config_dir
            from thresher.harvest.inputs import prepare_inputs, write_manifest
            from thresher.harvest.vision import decode_stage, decode_stage_remote_args

            start = time.perf_counter()
            source = self.stream.source
            inputs = prepare_inputs(source, self.cfg.run.seed, config_dir(self.cfg))
            write_manifest(self.run_dir, self.stream.stream_id, inputs.manifest)
            self.planned_rows = inputs.n_tokens
            self.pump.counters.unreadable_inputs += inputs.unreadable

            self.budget = store_budget(self.cfg, self._node_object_store(), self.streams_at_once)
            ctx = ray.data.DataContext.get_current()
            ctx.execution_options.preserve_order = True  # identical chunks on every run
            # Explicit, so the log's share of the store is known (see StoreBudget).
            ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
                object_store_memory=self.budget.harvest_bytes)
            # A harvester's own error (a ConfigError naming the fix) rather than Ray Data's
            # UserCodeException, which keeps only its text.
            ctx.raise_original_map_exception = True
            ctx.enable_progress_bars = False
            ctx.print_on_execution_start = False
            # One block per input batch: each harvest output reaches the pump on its own, so
            # trainers start on the first chunk instead of waiting for a bundle of forwards.
            ds = ray.data.from_items(inputs.batches,
                                     override_num_blocks=max(1, len(inputs.batches)))
            if inputs.decode is not None:
                # Decode and preprocess images in CPU tasks ahead of the backbone actors.
                ds = ds.map_batches(decode_stage, fn_kwargs={"spec": inputs.decode},
                                    batch_size=1, num_cpus=1,
                                    ray_remote_args_fn=decode_stage_remote_args)
            # Near the pump (soft: a pool larger than this node spills to other harvest nodes),
            # and only on harvest nodes where the cluster marks them.
            # (Node labels rather than a scheduling strategy: Ray Data deprecates the latter.)
            placement: dict[str, Any] = {
                "label_selector": {NODE_ID_LABEL: self.node_id},
                "fallback_strategy": [{"label_selector": {}}]}
            if self.harvest_resources:
                placement["resources"] = self.harvest_resources
            harvest = harvest_resources(self.cfg, source)
            ds = ds.map_batches(
                HarvestWorker,
                fn_constructor_kwargs={"source": source, "gpus": harvest.gpus_per_harvester,
                                       "threads": torch_threads(self.cfg, "harvester"),
                                       "base_dir": str(config_dir(self.cfg))},
                batch_size=1,
                num_cpus=harvest.cpus_per_harvester,
                num_gpus=harvest.gpus_per_harvester,
                compute=ray.data.ActorPoolStrategy(size=harvest.harvesters),
                **placement,
            )
            for cols in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
                forward = cols.pop("forward_call")
                unreadable = int(np.sum(cols.pop("unreadable", 0)))
                self.harvest_nodes.update(np.unique(cols.pop("harvest_node")).tolist())
                if self.pump.counters.blocks == 0 and len(forward):
                    # The row width is known now; nothing is in the log yet.
                    self.budget.check_log(self.stream.stream_id, self.cfg.stream.chunk_rows,
                                          self.cfg.stream.capacity_chunks, row_bytes(cols))
                block = ActivationBlock.from_columns(cols)
                with self.lock:
                    self.pump.add(block, forward, unreadable)
                    self.lock.notify_all()
                    while self.pump.pending and self.error is None:
                        self.lock.wait(timeout=1.0)  # backpressure: the log is full
                    if self.pump.chunker.done:
                        break  # every training row wanted is in; stop the harvest early
            with self.lock:
                self.pump.finish_harvest()
                if self.pump.chunker.holdout:
                    self.holdout_ref = ray.put(self.pump.chunker.holdout_block().to_columns())
                self.pump.counters.seconds = time.perf_counter() - start
                self.lock.notify_all()
            return {**self.pump.counters.to_dict(), **self.placement()}

        def _node_object_store(self) -> int:
            for node in ray.nodes():
                if node["NodeID"] == self.node_id:
                    return int(node["Resources"].get("object_store_memory", 0))
            return int(ray.cluster_resources().get("object_store_memory", 0))

        def placement(self) -> dict[str, Any]:
            """Where this stream ran: its harvest actors, the pump's node, the harvesters' nodes,
            the store budget."""
            nodes = {node_tag(n["NodeID"]): n["NodeID"] for n in ray.nodes()}
            harvest = harvest_resources(self.cfg, self.stream.source)
            out: dict[str, Any] = {
                "harvesters": harvest.harvesters,
                "cpus_per_harvester": harvest.cpus_per_harvester,
                "gpus_per_harvester": harvest.gpus_per_harvester,
                "pump_node": self.node_id,
                "harvester_nodes": sorted(nodes.get(t, f"{t:015x}") for t in self.harvest_nodes)}
            if self.budget is not None:
                out.update({"object_store_mb": self.budget.store_bytes / MIB,
                            "harvest_object_store_mb": self.budget.harvest_bytes / MIB})
            return out

        def stats(self, hook: str | None = None, timeout: float = 5.0
                  ) -> StreamStats | dict[str, StreamStats] | None:
            """A hook's scale and bias estimate (every hook's without `hook`), once the first
            rows are in; None while they are not."""
            with self.lock:
                self.lock.wait_for(lambda: self.pump.stats is not None or self.error is not None
                                   or self.pump.harvest_done, timeout=timeout)
                self._raise_if_failed()
                stats = self.pump.stats
                if stats is None or hook is None:
                    return stats
                return stats[hook]

        def trainer_started(self, trainer_id: str, step: int) -> None:
            """A trainer (re)started at `step`; a restart records the steps it has to redo."""
            with self.lock:
                if self.trainer_starts[trainer_id]:
                    last = self.progress_steps[trainer_id]
                    self.restarts[trainer_id].append(
                        {"resumed_at": step, "last_step": last, "steps_lost": max(0, last - step)})
                self.trainer_starts[trainer_id] += 1
                self.progress_steps[trainer_id] = step

        def report_step(self, trainer_id: str, step: int) -> None:
            with self.lock:
                self.progress_steps[trainer_id] = max(self.progress_steps[trainer_id], step)

        def group(self, trainer_id: str, g: int, steps: int, timeout: float = 2.0) -> GroupReply:
            """Group g for a trainer; waits up to `timeout` seconds for it to be complete."""
            with self.lock:
                self.progress_steps[trainer_id] = steps
                while True:
                    self._raise_if_failed()
                    if self.pump.log.at_end(g):
                        return ("end", None)
                    group: Group[Any] | None = self.pump.log.group(g)
                    if group is not None:
                        return ("ready", group)
                    if not self.lock.wait(timeout=timeout):
                        return ("wait", self.pump.log.full)

        def commit(self, trainer_id: str, cursor: Cursor) -> None:
            with self.lock:
                self.pump.commit(trainer_id, cursor)
                self.lock.notify_all()

        def holdout(self, timeout: float = 600.0) -> list[Any]:
            """The held-out rows (wrapped ref), once the harvest is over."""
            with self.lock:
                self.lock.wait_for(lambda: self.pump.log.finished or self.error is not None,
                                   timeout=timeout)
                self._raise_if_failed()
                return [self.holdout_ref]

        def progress(self) -> dict[str, Any]:
            with self.lock:
                log = self.pump.log
                return {"rows": self.pump.counters.rows, "planned_rows": self.planned_rows,
                        "wanted_rows": self.pump.chunker.wanted_rows,
                        "holdout_rows": self.cfg.stream.holdout_rows,
                        "steps": dict(self.progress_steps), "held": log.held,
                        "peak_held": log.counters.peak_held, "capacity": log.capacity,
                        "restarts": {t: list(r) for t, r in self.restarts.items()}}

        def log_counters(self) -> dict[str, Any]:
            with self.lock:
                c = self.pump.log.counters
                return {"appended": c.appended, "released": c.released,
                        "peak_held": c.peak_held, "capacity": self.pump.log.capacity,
                        "held_history": list(c.held_history)}

        def _raise_if_failed(self) -> None:
            if self.failure is not None:
                raise self.failure  # the user's problem, with its own message
            if self.error is not None:
                raise RuntimeError(f"the harvest of stream {self.stream.stream_id} failed: "
                                   f"{self.error}")

    return StreamActor


_STREAM_ACTOR: Any = None


def stream_actor_cls() -> Any:
    """The Ray actor class, built on first use so importing this module never needs Ray."""
    global _STREAM_ACTOR
    if _STREAM_ACTOR is None:
        _STREAM_ACTOR = _stream_actor_cls()
    return _STREAM_ACTOR
