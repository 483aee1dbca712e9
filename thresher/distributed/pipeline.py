"""The Ray executor: per stream, harvest pool -> pump + broadcast log -> trainer actors.

`run_ray` joins the cluster named by RAY_ADDRESS (as under `ray job submit`) or starts a local
Ray. Each stream gets one StreamActor (pump + log; it runs the harvest pool) and the trainer
actors of the plan. Streams run `concurrent_streams` at a time, the rest wait in a queue; the
driver polls progress until every trainer of every stream has returned its result.

Placement: where the cluster declares the node-type resources named in `resources`
(cluster.yaml's `harvest_node` and `train_node`), the StreamActor and the harvesters take a
marker amount of the first and the trainers of the second; elsewhere (a laptop) Ray places them
freely. Harvesters and trainers ask for `gpus_per_harvester` / `gpus_per_trainer` GPUs; a
fraction packs several on one GPU.

A driver that died leaves its actors to Ray, which removes them within seconds; a resumed run
waits for the old run's actors to be gone before it starts, so two drivers never write one run.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thresher import uri_io
from thresher.analysis.curves import CurveLog
from thresher.analysis.evaluate import TrainerResult
from thresher.config import Config, Plan, StreamPlan, harvest_resources
from thresher.distributed.errors import user_error
from thresher.distributed.harvest_worker import NODE_MARKER
from thresher.distributed.stream_actor import stream_actor_class
from thresher.distributed.trainer_actor import trainer_actor_class
from thresher.harvest.service import StreamProgress
from thresher.outcome import RunOutcome, StreamOutcome, TrainerOutcome
from thresher.progress import Progress
from thresher.rundir import RunDirError

# No runtime env of our own for the actors: an actor whose env differs from the job's cannot use
# the workers Ray starts ahead, and waits for a new process. Trainers keep OpenMP's own wait
# policy (spin a little, then sleep; less spinning when threads outnumber cores): forcing PASSIVE
# left a lone trainer's threads idle part of the time (benchmarks/ray_vs_inline.py compares SAE
# step time on Ray and inline). A user's OMP_WAIT_POLICY reaches them through the job's
# environment.


def ensure_ray(cfg: Config) -> None:
    """Join RAY_ADDRESS's cluster, or start a local Ray sized for this machine."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)
        return
    if cfg.resources.object_store_mb:
        kwargs["object_store_memory"] = cfg.resources.object_store_mb * 2**20
    ray.init(num_cpus=os.cpu_count(), **kwargs)


def concurrent_streams(cfg: Config, cluster: dict[str, float]) -> int:
    """Streams to run at once: the config's, else as many as the cluster's CPUs and GPUs hold
    (one CPU kept for the pump and decode tasks), at least one."""
    res = cfg.resources
    if res.concurrent_streams:
        return res.concurrent_streams
    # Sized for the hungriest stream: any of them may be among those running.
    harvests = [harvest_resources(cfg, source) for source in cfg.sources]
    need = {"CPU": max(h.harvesters * h.cpus_per_harvester for h in harvests)
            + res.trainers * res.cpus_per_trainer,
            "GPU": max(h.harvesters * h.gpus_per_harvester for h in harvests)
            + res.trainers * res.gpus_per_trainer}
    have = {"CPU": cluster.get("CPU", 0.0) - 1.0, "GPU": cluster.get("GPU", 0.0)}
    fits = [math.floor(have[r] / need[r] + 1e-9) for r in need if need[r] > 0]
    return max(1, min(fits, default=1))


def node_marker(resource: str, cluster: Mapping[str, float]) -> dict[str, float]:
    """{resource: NODE_MARKER} where the cluster declares `resource`, else {} (a laptop)."""
    return {resource: NODE_MARKER} if resource and cluster.get(resource, 0.0) > 0 else {}


def run_tag(cfg: Config, run_dir: Path) -> str:
    """The prefix of this run's actor names: its name and a digest of its directory."""
    where = uri_io.location_of(Path(run_dir).resolve())
    digest = hashlib.sha1(where.encode()).hexdigest()[:8]
    return f"{cfg.run.name}-{digest}"


def _actors_of(tag: str) -> list[str]:
    import ray

    prefixes = (f"thresher-stream-{tag}-", f"thresher-trainer-{tag}-")
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith(prefixes))


def wait_for_previous_driver(tag: str, timeout: float = 60.0) -> None:
    """Wait until no actor of an earlier run of this directory is alive (Ray removes a dead
    driver's actors within seconds); refuse if they stay: another driver is running it."""
    deadline = time.monotonic() + timeout
    while (left := _actors_of(tag)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left:
        raise RunDirError(
            f"another driver is running this run: its actors {', '.join(left[:3])} are alive "
            "in the cluster. Stop that job (`ray job stop ID`) or wait for it, then resume")


@dataclass
class _RunningStream:
    """The actors of one stream and the results its trainers have returned so far."""

    plan: StreamPlan
    stream_actor: Any
    harvest_ref: Any
    trainers: list[Any]
    pending: dict[Any, str] = field(default_factory=dict)  # trainer run() ref -> trainer id
    results: list[TrainerResult] = field(default_factory=list)
    harvest_done: bool = False
    started_beside: tuple[str, ...] = ()  # the streams running when this one started

    def refs(self) -> list[Any]:
        """What the driver waits on: trainer results, and the harvest until it is over."""
        return [*self.pending, *([] if self.harvest_done else [self.harvest_ref])]

    def take(self, done: list[Any]) -> None:
        """Take this stream's finished calls among `done`: its harvest (raising if it failed)
        and its trainers' results."""
        import ray

        for ref in done:
            if ref == self.harvest_ref:
                ray.get(ref)  # raises if the harvest failed
                self.harvest_done = True
            elif ref in self.pending:
                self.pending.pop(ref)
                self.results.append(ray.get(ref))


def _start_stream(cfg: Config, stream: StreamPlan, run_dir: Path, tag: str,
                  streams_at_once: int, cluster: Mapping[str, float]) -> _RunningStream:
    # Named actors: trainers find their stream by name (a handle would pin their constructor
    # arguments in the object store, ray#53727), and tests and operators find both.
    res = cfg.resources
    # Actors get the run's location: on another node, a URI maps to that node's working copy.
    location = uri_io.location_of(run_dir)
    stream_tag = f"{tag}-{stream.stream_id}-{uuid.uuid4().hex[:8]}"
    stream_name = f"thresher-stream-{stream_tag}"
    harvest_marker = node_marker(res.harvest_node_resource, cluster)
    stream_actor = (stream_actor_class()
                    .options(name=stream_name, resources=harvest_marker)
                    .remote(cfg, stream, location, streams_at_once, harvest_marker))
    trainers = [
        trainer_actor_class()
        .options(name=f"thresher-trainer-{stream_tag}-{t.trainer_id}",
                 num_cpus=res.cpus_per_trainer, num_gpus=res.gpus_per_trainer,
                 resources=node_marker(res.train_node_resource, cluster))
        .remote(cfg, stream.stream_id, t, location, stream_name)
        for t in stream.trainers
    ]
    running = _RunningStream(stream, stream_actor, stream_actor.run_harvest.remote(), trainers)
    running.pending = {actor.run.remote(): t.trainer_id
                       for actor, t in zip(trainers, stream.trainers, strict=True)}
    return running


def _finish_stream(running: _RunningStream, curves: CurveLog
                   ) -> tuple[list[TrainerOutcome], StreamOutcome]:
    """The stream's outcome and its trainers', with the restarts it recorded; the curve points
    its trainers sent last go to `curves`."""
    import ray

    actor = running.stream_actor
    harvest, log_summary, stats, placement, pump, progress, points = ray.get([
        running.harvest_ref, actor.log_summary.remote(), actor.stream_stats.remote(),
        actor.placement.remote(), actor.pump_cost.remote(), actor.progress.remote(),
        actor.take_curve_points.remote()])
    curves.add(points)
    _stop(running)
    trainers = [TrainerOutcome(r, progress.restarts[r.trainer_id]) for r in running.results]
    return trainers, StreamOutcome(harvest=harvest, log_summary=log_summary, stats=stats,
                                   placement=placement, pump=pump,
                                   started_beside=running.started_beside)


def _stop(running: _RunningStream) -> None:
    import ray

    for actor in running.trainers:
        ray.kill(actor)
    ray.kill(running.stream_actor)


def run_ray(plan: Plan, run_dir: Path, curves: CurveLog, progress_enabled: bool | None = None,
            poll_seconds: float = 0.5) -> RunOutcome:
    import ray

    cfg = plan.config
    ensure_ray(cfg)
    tag = run_tag(cfg, run_dir)
    wait_for_previous_driver(tag)
    cluster = ray.cluster_resources()
    limit = concurrent_streams(cfg, cluster)
    queue = list(plan.streams)
    running: dict[str, _RunningStream] = {}
    outcome = RunOutcome(trainers=[], streams={})
    progress = Progress.of_plan(plan, enabled=progress_enabled)
    rows_done: dict[str, int] = {}
    try:
        while queue or running:
            while queue and len(running) < limit:
                stream = queue.pop(0)
                started = _start_stream(cfg, stream, run_dir, tag, limit, cluster)
                started.started_beside = tuple(running)
                running[stream.stream_id] = started
            refs = [ref for r in running.values() for ref in r.refs()]
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=poll_seconds)
            # Harvests first: a failed harvest's error is the cause of its trainers' errors.
            harvests = {r.harvest_ref for r in running.values()}
            done.sort(key=lambda ref: ref not in harvests)
            steps: dict[str, int] = {}
            for stream_id, r in list(running.items()):
                r.take(done)
                if not r.pending:  # every trainer of the stream returned
                    trainers, outcome.streams[stream_id] = _finish_stream(r, curves)
                    outcome.trainers += trainers
                    del running[stream_id]
                    continue
                info: StreamProgress
                info, points = ray.get([r.stream_actor.progress.remote(),
                                        r.stream_actor.take_curve_points.remote()])
                rows_done[stream_id] = info.rows
                steps.update(info.steps)
                curves.add(points)
            progress.update(sum(rows_done.values()), steps, curves.newest)
    except ray.exceptions.RayError as exc:
        # A bad config, checkpoint or full disk found inside an actor: its own message.
        cause = user_error(exc)
        if cause is None:
            raise
        raise cause from None
    finally:
        progress.close()
        for r in running.values():
            _stop(r)
    outcome.trainers.sort(key=lambda t: int(t.result.trainer_id.lstrip("t") or 0))
    return outcome
