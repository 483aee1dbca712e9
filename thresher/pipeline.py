"""The Ray executor: per stream, harvest pool -> pump + broadcast log -> trainer actors.

`run_ray` joins the cluster named by RAY_ADDRESS (as under `ray job submit`) or starts a local
Ray. Each stream gets one StreamActor (pump + log; it runs the Ray Data harvest) and the trainer
actors of the plan. Streams run `concurrent_streams` at a time, the rest wait in a queue; the
driver polls progress until every trainer of every stream has returned its result.
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thresher.analysis.evaluate import TrainerResult
from thresher.config import Config, Plan, StreamPlan
from thresher.harvest.pump import stream_actor_cls
from thresher.outcome import RunOutcome, StreamOutcome
from thresher.progress import Progress
from thresher.train.actor import trainer_actor_cls


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
    (one CPU kept for Ray Data's own tasks), at least one."""
    res = cfg.resources
    if res.concurrent_streams:
        return res.concurrent_streams
    need = {"CPU": res.harvesters * res.cpus_per_harvester + res.trainers * res.cpus_per_trainer,
            "GPU": res.harvesters * res.gpus_per_harvester + res.trainers * res.gpus_per_trainer}
    have = {"CPU": cluster.get("CPU", 0.0) - 1.0, "GPU": cluster.get("GPU", 0.0)}
    fits = [math.floor(have[r] / need[r] + 1e-9) for r in need if need[r] > 0]
    return max(1, min(fits, default=1))


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

    def refs(self) -> list[Any]:
        """What the driver waits on: trainer results, and the harvest until it is over."""
        return [*self.pending, *([] if self.harvest_done else [self.harvest_ref])]


def _start_stream(cfg: Config, stream: StreamPlan, run_dir: Path) -> _RunningStream:
    # Named actors: trainers find their stream by name (a handle would pin their constructor
    # arguments in the object store, ray#53727), and tests and operators find both.
    res = cfg.resources
    tag = f"{cfg.run.name}-{stream.stream_id}-{uuid.uuid4().hex[:8]}"
    stream_name = f"thresher-stream-{tag}"
    stream_actor = stream_actor_cls().options(name=stream_name).remote(cfg, stream, str(run_dir))
    trainers = [
        trainer_actor_cls()
        .options(name=f"thresher-trainer-{tag}-{t.trainer_id}", num_cpus=res.cpus_per_trainer,
                 num_gpus=res.gpus_per_trainer)
        .remote(cfg, stream.stream_id, t, str(run_dir), stream_name)
        for t in stream.trainers
    ]
    running = _RunningStream(stream, stream_actor, stream_actor.harvest.remote(), trainers)
    running.pending = {actor.run.remote(): t.trainer_id
                       for actor, t in zip(trainers, stream.trainers, strict=True)}
    return running


def _finish_stream(running: _RunningStream) -> StreamOutcome:
    import ray

    harvest = ray.get(running.harvest_ref)
    log = ray.get(running.stream_actor.log_counters.remote())
    log.pop("held_history", None)
    stats = ray.get(running.stream_actor.stats.remote())
    _stop(running)
    return StreamOutcome(harvest=harvest, log=log, stats=stats)


def _stop(running: _RunningStream) -> None:
    import ray

    for actor in running.trainers:
        ray.kill(actor)
    ray.kill(running.stream_actor)


def run_ray(plan: Plan, run_dir: Path, progress_enabled: bool | None = None,
            poll_seconds: float = 0.5) -> RunOutcome:
    import ray

    cfg = plan.config
    ensure_ray(cfg)
    limit = concurrent_streams(cfg, ray.cluster_resources())
    queue = list(plan.streams)
    running: dict[str, _RunningStream] = {}
    outcome = RunOutcome(results=[], streams={})
    steps_total = -(-cfg.train.tokens // cfg.train.batch_size)
    progress = Progress(len(plan.streams) * (cfg.train.tokens + cfg.stream.holdout_rows),
                        {t.trainer_id: steps_total for t in plan.trainers},
                        enabled=progress_enabled)
    rows_done: dict[str, int] = {}
    try:
        while queue or running:
            while queue and len(running) < limit:
                stream = queue.pop(0)
                running[stream.stream_id] = _start_stream(cfg, stream, run_dir)
            refs = [ref for r in running.values() for ref in r.refs()]
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=poll_seconds)
            steps: dict[str, int] = {}
            for stream_id, r in list(running.items()):
                for ref in done:
                    if ref == r.harvest_ref:
                        ray.get(ref)  # raises if the harvest failed
                        r.harvest_done = True
                    elif ref in r.pending:
                        r.pending.pop(ref)
                        r.results.append(ray.get(ref))
                if not r.pending:  # every trainer of the stream returned
                    outcome.streams[stream_id] = _finish_stream(r)
                    outcome.results += r.results
                    del running[stream_id]
                    continue
                info = ray.get(r.stream_actor.progress.remote())
                rows_done[stream_id] = info["rows"]
                steps.update(info["steps"])
            progress.update(sum(rows_done.values()), steps)
    finally:
        progress.close()
        for r in running.values():
            _stop(r)
    outcome.results.sort(key=lambda r: int(r.trainer_id.lstrip("t") or 0))
    return outcome
