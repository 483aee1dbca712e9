"""The stream actor: a stream's `StreamService` on Ray, with what only Ray has.

The service (thresher/harvest/service.py) is the harvest loop with backpressure, the trainer
protocol, failure relay, restarts, curve points and progress, for both executors. On Ray it
runs in a threaded actor (`stream_actor_class`): the harvest in one call while trainers fetch
groups and commit cursors in others, so trainers waiting on a full log never hold up the
harvest. What `StreamActor` adds is what needs Ray: it starts the harvest (`HarvestPool`: a
fixed pool of harvester actors, thresher/distributed/harvest_worker.py), sizes it to the
node's object store, feeds the service object refs (it never fetches a block: trainers read
the rows from the object store themselves, and the stream statistics are a Ray task over the
normalisation rows), says where it ran and samples its own memory.

Who owns a chunk: the harvest calls are submitted from this process, so this actor owns every
harvest output, while the bytes live in the object store of the harvester's node. A harvester
that dies takes nothing with it (Ray restarts it and retries its calls); the rows stay in the
log until every trainer has committed past them.

Placement: the driver puts the stream actor on a harvest node (a node declaring
`resources.harvest_node_resource`, where the cluster has one); the harvester actors ask for the
same marker resource and, softly, for the stream actor's own node. The harvest holds at most
`StoreBudget.harvest_bytes` of outputs in flight, and the log's worst case is checked against
the node's object store before the first chunk is appended.
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from thresher import uri_io
from thresher.config import Config, StreamPlan, config_dir, harvest_resources, torch_threads
from thresher.distributed.blocks import estimate_stats
from thresher.distributed.errors import user_error
from thresher.distributed.harvest_worker import NODE_ID_LABEL, HarvestPool
from thresher.errors import UserError
from thresher.harvest.inputs import close_inputs, open_inputs
from thresher.harvest.report import HarvestCounters, Harvested, PumpCost, StreamPlacement
from thresher.harvest.service import StreamService
from thresher.stream.budget import MIB, StoreBudget, store_budget
from thresher.stream.stats import StreamStats

# Ray's ObjectRef: of a harvest output's columns (a handle), of the statistics task (Stats).
Ref = Any


class StreamActor(StreamService[Ref, Ref]):
    """A stream's service on the harvest node; owns every harvest output."""

    def __init__(self, cfg: Config, stream: StreamPlan, run_dir: str,
                 streams_at_once: int = 1,
                 harvest_resources: dict[str, float] | None = None) -> None:
        import ray

        super().__init__(cfg, stream, estimate=ray.remote(num_cpus=0)(estimate_stats).remote)
        # The run's location (a URI reaches this node's working copy of it).
        self.run_dir = str(uri_io.working_dir(run_dir))
        self.node_id: str = ray.get_runtime_context().get_node_id()
        self.streams_at_once = streams_at_once
        self.harvest_resources = dict(harvest_resources or {})
        self.budget: StoreBudget | None = None
        self.harvest_nodes: set[str] = set()
        self.memory = MemorySampler()

    def user_error(self, exc: BaseException) -> UserError | None:
        return user_error(exc)  # looks inside Ray's wrappings

    def run_harvest(self) -> HarvestCounters:
        """Run the whole harvest; returns its counters. Trainers read meanwhile."""
        start = time.perf_counter()
        try:
            pool = self._start_pool()
            try:
                inputs = open_inputs(self.cfg, self.stream, self.run_dir)  # the manifest too
                self.planned_rows = inputs.planned_rows
                self.memory.start(lambda: self.pump.harvest_done or self.error is not None)
                outputs = pool.harvest(inputs.batches, decode=inputs.decode)
                self.harvest(self._sized(pool, outputs), started=start)
                self.harvest_nodes = pool.node_ids()
            finally:
                pool.stop()
            # Its unreadable inputs named and flagged in the manifest.
            close_inputs(inputs, self.stream, self.run_dir, self.counters)
            return self.counters
        except BaseException as exc:
            self.fail(exc)  # surface to trainers waiting on the log
            cause = self.failure
            if cause is not None and cause is not exc:
                raise cause from None  # the message the user can act on, not Ray's wrapping
            raise

    def _sized(self, pool: HarvestPool, outputs: Iterable[Harvested[Ref]]
               ) -> Iterator[Harvested[Ref]]:
        """The outputs, the pool's in-flight count and the log's worst case set from the first
        block's size (the row width is known then; nothing is in the log yet)."""
        sized = False
        for out in outputs:
            if not sized and out.report.rows:
                assert self.budget is not None
                # Each actor keeps one batch queued behind its running one, as budget allows.
                pool.in_flight = max(pool.actors_n, min(
                    2 * pool.actors_n, self.budget.harvest_bytes // out.store_bytes))
                s = self.cfg.stream
                self.budget.check_log(self.stream.stream_id, s.chunk_rows, s.capacity_chunks,
                                      out.store_bytes / out.report.rows)
                sized = True
            yield out

    def _start_pool(self) -> HarvestPool:
        """The harvester actors, starting (imports, the backbone) while the inputs are
        prepared."""
        source = self.stream.source
        self.budget = store_budget(self.cfg, self._node_object_store(), self.streams_at_once)
        # Near the pump (soft: a pool larger than this node spills to other harvest nodes),
        # and only on harvest nodes where the cluster marks them.
        harvest = harvest_resources(self.cfg, source)
        options: dict[str, Any] = {
            "num_cpus": harvest.cpus_per_harvester, "num_gpus": harvest.gpus_per_harvester,
            "label_selector": {NODE_ID_LABEL: self.node_id},
            "fallback_strategy": [{"label_selector": {}}]}
        if self.harvest_resources:
            options["resources"] = self.harvest_resources
        return HarvestPool(source, actors=harvest.harvesters,
                           in_flight=2 * harvest.harvesters,
                           gpus=harvest.gpus_per_harvester,
                           threads=torch_threads(self.cfg, "harvester", source),
                           base_dir=str(config_dir(self.cfg)), options=options)

    def _node_object_store(self) -> int:
        import ray

        for node in ray.nodes():
            if node["NodeID"] == self.node_id:
                return int(node["Resources"].get("object_store_memory", 0))
        return int(ray.cluster_resources().get("object_store_memory", 0))

    def placement(self) -> StreamPlacement:
        """Where this stream ran: its harvest actors, the pump's node, the harvesters' nodes,
        the store budget."""
        harvest = harvest_resources(self.cfg, self.stream.source)
        budget = self.budget
        return StreamPlacement(
            harvesters=harvest.harvesters, cpus_per_harvester=harvest.cpus_per_harvester,
            gpus_per_harvester=harvest.gpus_per_harvester, pump_node=self.node_id,
            harvester_nodes=tuple(sorted(self.harvest_nodes)),
            object_store_mb=budget.store_bytes / MIB if budget else 0.0,
            harvest_object_store_mb=budget.harvest_bytes / MIB if budget else 0.0)

    def pump_cost(self) -> PumpCost:
        """This process's CPU seconds, and its memory growth while it streamed (sampled)."""
        return self.memory.cost()

    def stream_stats(self, timeout: float = 5.0) -> dict[str, StreamStats] | None:
        """Every hook's scale and bias estimate, once the first rows are in; None while they
        are not after `timeout` seconds."""
        import ray

        pending = self.stats_estimate(timeout)
        return None if pending is None else ray.get(pending)  # a small task result

    def hook_stats(self, hook: str, timeout: float = 5.0) -> StreamStats | None:
        """One hook's estimate (a trainer's), as `stream_stats`."""
        stats = self.stream_stats(timeout)
        return None if stats is None else stats[hook]


class MemorySampler:
    """The pump process's CPU time since it started, and its resident memory sampled from the
    harvest's start to its end: held rows stay resident, so a coarse sample sees them."""

    def __init__(self) -> None:
        self.cpu_at_start = time.process_time()
        self.rss_at_start = self.rss_peak = 0  # once started (imports and set-up before)

    def start(self, done: Callable[[], bool]) -> None:
        """Sample every 0.1 s in a thread until `done()`."""
        self.rss_at_start = self.rss_peak = rss_bytes()
        threading.Thread(target=self._sample, args=(done,), daemon=True).start()

    def _sample(self, done: Callable[[], bool]) -> None:
        while not done():
            self.rss_peak = max(self.rss_peak, rss_bytes())
            time.sleep(0.1)

    def cost(self) -> PumpCost:
        return PumpCost(pump_cpu_seconds=time.process_time() - self.cpu_at_start,
                        pump_rss_growth_bytes=max(0, self.rss_peak - self.rss_at_start))


def stream_actor_class() -> Any:
    """`StreamActor` as a Ray actor class: threaded, so trainers are served while the harvest
    runs; no CPU of its own (it moves refs)."""
    import ray

    return ray.remote(num_cpus=0, max_concurrency=16)(StreamActor)


def rss_bytes() -> int:
    """This process's resident memory (Linux's VmRSS): what it allocated, and the pages of
    the object store it has touched, e.g. by reading a block; elsewhere its peak RSS."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
