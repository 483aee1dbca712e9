"""The stream actor: one stream's pump and broadcast log on Ray, serving its trainers.

It starts the harvest (`HarvestPool`: a fixed pool of harvester actors,
thresher/distributed/harvest_worker.py), prepares the inputs and writes the manifest while the
harvesters load their backbone, then runs the harvest and feeds each harvest output to
the `Pump` as an object ref and a row count, from the harvester's report. It never fetches a
block: chunks are pieces of harvest outputs, trainers read the rows from the object store
themselves, and the stream statistics are a Ray task over the normalisation rows.

Who owns a chunk: the harvest calls are submitted from this process, so this actor owns every
harvest output, while the bytes live in the object store of the harvester's node. A harvester
that dies takes nothing with it (Ray restarts it and retries its calls); the rows stay in the
log until every trainer has committed past them.

It is a threaded actor: the harvest loop runs in one call while trainers read groups and commit
cursors in others, so trainers waiting on a full log never hold up the harvest.

Placement: the driver puts the stream actor on a harvest node (a node declaring
`resources.harvest_node_resource`, where the cluster has one); the harvester actors ask for the
same marker resource and, softly, for the stream actor's own node. The harvest holds at most
`StoreBudget.harvest_bytes` of outputs in flight, and the log's worst case is checked against
the node's object store before the first chunk is appended.
"""

from __future__ import annotations

import functools
import logging
import resource
import threading
import time
from typing import Any

from thresher import uri_io
from thresher.config import Config, StreamPlan, harvest_resources, torch_threads
from thresher.distributed.blocks import estimate_stats
from thresher.distributed.errors import user_error
from thresher.distributed.harvest_worker import NODE_ID_LABEL, HarvestPool
from thresher.harvest.inputs import close_inputs, open_inputs
from thresher.modalities.contract import Inputs
from thresher.stream.budget import MIB, StoreBudget, store_budget
from thresher.stream.chunker import Piece
from thresher.stream.log import Cursor, Group
from thresher.stream.pump import Pump
from thresher.stream.reader import EndOfStream, NotReady, fetch_group
from thresher.stream.stats import StreamStats

log = logging.getLogger(__name__)

# What a trainer gets from StreamActor.group: ("ready", Group), ("wait", log_full), ("end", None)
GroupReply = tuple[str, Any]


@functools.cache
def stream_actor_cls() -> Any:
    """The Ray actor class, built on first use so importing this module never needs Ray."""
    import ray

    estimate_task = ray.remote(num_cpus=0)(estimate_stats)

    @ray.remote(num_cpus=0, max_concurrency=16)
    class StreamActor:
        """Pump + broadcast log of one stream, on the harvest node; owns every harvest output."""

        def __init__(self, cfg: Config, stream: StreamPlan, run_dir: str, name: str,
                     streams_at_once: int = 1,
                     harvest_resources: dict[str, float] | None = None) -> None:
            self.cfg, self.stream, self.name = cfg, stream, name
            # The run's location (a URI reaches this node's working copy of it).
            self.run_dir = str(uri_io.working_dir(run_dir))
            self.lock = threading.Condition()
            self.pump: Pump[Any, Any] = Pump(cfg, stream, estimate=estimate_task.remote)
            self.error: str | None = None
            self.failure: BaseException | None = None  # a user error trainers re-raise as is
            self.progress_steps: dict[str, int] = {t.trainer_id: 0 for t in stream.trainers}
            self.planned_rows = 0
            self.inputs: Inputs | None = None  # once prepared (the harvest starts)
            self.node_id = ray.get_runtime_context().get_node_id()
            self.streams_at_once = streams_at_once
            self.harvest_resources = dict(harvest_resources or {})
            self.budget: StoreBudget | None = None
            self.harvest_nodes: set[str] = set()
            self.store_bytes = 0  # object-store bytes of the harvest outputs taken in
            # Trainer restarts: each start after the first records where the trainer resumed
            # and the last step it had reported, i.e. the steps it has to redo (trainers report
            # every half second, so the steps of the last half second before a loss are not
            # counted).
            self.trainer_starts: dict[str, int] = {t.trainer_id: 0 for t in stream.trainers}
            self.restarts: dict[str, list[dict[str, int]]] = {
                t.trainer_id: [] for t in stream.trainers}
            # Trainers' curve points not yet taken by the driver (it logs and saves them).
            self.curve_points: list[dict[str, Any]] = []
            self.cpu_at_start = time.process_time()
            self.rss_at_start = 0  # once the harvest loop starts (imports and set-up before)
            self.rss_peak = 0

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

        def _start_pool(self) -> HarvestPool:
            """The harvester actors, starting (imports, the backbone) while the inputs are
            prepared."""
            from thresher.config import config_dir

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

        def _harvest(self) -> dict[str, Any]:
            start = time.perf_counter()
            pool = self._start_pool()
            stream_cfg = self.cfg.stream
            try:
                # The stream's inputs, written to the manifest; closed when the harvest ends
                # (its unreadable inputs named).
                self.inputs = inputs = open_inputs(self.cfg, self.stream, self.run_dir)
                self.planned_rows = inputs.planned_rows
                self.rss_at_start = self.rss_peak = _rss_bytes()
                threading.Thread(target=self._sample_rss, daemon=True).start()
                for out in pool.harvest(inputs.batches, decode=inputs.decode):
                    rows = out.report.rows
                    if rows and self.pump.counters.rows == 0:
                        # The row width is known now; nothing is in the log yet. Each actor
                        # keeps one batch queued behind its running one, as the budget allows.
                        row_bytes = out.block_bytes / rows
                        pool.in_flight = max(pool.actors_n, min(
                            2 * pool.actors_n, self.budget.harvest_bytes // out.block_bytes))
                        self.budget.check_log(self.stream.stream_id,  # type: ignore[union-attr]
                                              stream_cfg.chunk_rows, stream_cfg.capacity_chunks,
                                              row_bytes)
                    self.store_bytes += out.block_bytes
                    with self.lock:
                        self.pump.add(out.block, rows, out.report)
                        self.lock.notify_all()
                        while self.pump.pending and self.error is None:
                            self.lock.wait(timeout=1.0)  # backpressure: the log is full
                    if self.pump.chunker.done:
                        break  # every training row wanted is in; stop the harvest early
                self.harvest_nodes = pool.node_ids()
            finally:
                pool.stop()
            assert self.inputs is not None
            close_inputs(self.inputs, self.stream, self.run_dir, self.pump.counters)
            with self.lock:
                self.pump.finish_harvest()
                self.pump.counters.seconds = time.perf_counter() - start
                self.lock.notify_all()
            return {**self.pump.counters.to_dict(), **self.placement(), **self.pump_counters()}

        def _sample_rss(self) -> None:
            while not self.pump.harvest_done and self.error is None:
                self.rss_peak = max(self.rss_peak, _rss_bytes())
                time.sleep(0.1)  # held rows stay resident: a coarse sample sees them

        def pump_counters(self) -> dict[str, Any]:
            """What the pump process cost: its CPU seconds, its memory growth while it streamed
            (sampled), and the object-store bytes per row of the harvest outputs it took in."""
            rows = max(1, self.pump.counters.rows)
            return {"pump_cpu_seconds": time.process_time() - self.cpu_at_start,
                    "pump_rss_growth_bytes": max(0, self.rss_peak - self.rss_at_start),
                    "object_store_bytes_per_row": self.store_bytes / rows}

        def _node_object_store(self) -> int:
            for node in ray.nodes():
                if node["NodeID"] == self.node_id:
                    return int(node["Resources"].get("object_store_memory", 0))
            return int(ray.cluster_resources().get("object_store_memory", 0))

        def placement(self) -> dict[str, Any]:
            """Where this stream ran: its harvest actors, the pump's node, the harvesters' nodes,
            the store budget."""
            harvest = harvest_resources(self.cfg, self.stream.source)
            out: dict[str, Any] = {
                "harvesters": harvest.harvesters,
                "cpus_per_harvester": harvest.cpus_per_harvester,
                "gpus_per_harvester": harvest.gpus_per_harvester,
                "pump_node": self.node_id,
                "harvester_nodes": sorted(self.harvest_nodes)}
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
                pending = self.pump.stats
            if pending is None:
                return None
            stats: dict[str, StreamStats] = ray.get(pending)  # a small task result
            return stats if hook is None else stats[hook]

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

        def report_curve_points(self, points: list[dict[str, Any]]) -> None:
            with self.lock:
                self.curve_points.extend(points)

        def group(self, trainer_id: str, g: int, steps: int, timeout: float = 2.0) -> GroupReply:
            """Group g for a trainer; waits up to `timeout` seconds for it to be complete."""
            with self.lock:
                self.progress_steps[trainer_id] = steps
                while True:
                    self._raise_if_failed()
                    try:
                        group: Group[Any] = fetch_group(self.pump.log, g)
                    except EndOfStream:
                        return ("end", None)
                    except NotReady:
                        if not self.lock.wait(timeout=timeout):
                            return ("wait", self.pump.log.full)
                        continue
                    return ("ready", group)

        def commit(self, trainer_id: str, cursor: Cursor) -> None:
            with self.lock:
                self.pump.commit(trainer_id, cursor)
                self.lock.notify_all()

        def holdout(self, timeout: float = 600.0) -> list[Piece[Any]]:
            """The held-out blocks (pieces holding their refs), once the harvest is over."""
            with self.lock:
                self.lock.wait_for(lambda: self.pump.log.finished or self.error is not None,
                                   timeout=timeout)
                self._raise_if_failed()
                return list(self.pump.chunker.holdout)

        def take_curve_points(self) -> list[dict[str, Any]]:
            """The trainers' curve points since the last call (the driver is their reader)."""
            with self.lock:
                points, self.curve_points = self.curve_points, []
            return points

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


def _rss_bytes() -> int:
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
