"""The Ray executor: harvest pool -> pump + broadcast log -> trainer actors -> statistics.

`run_ray` joins the cluster named by RAY_ADDRESS (as under `ray job submit`) or starts a local
Ray. Per stream it starts one StreamActor (pump + log; it runs the Ray Data harvest) and the
trainer actors of the plan, then polls progress until every trainer has returned its result.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from thresher.analysis.evaluate import TrainerResult
from thresher.config import Config, Plan
from thresher.harvest.pump import stream_actor_cls
from thresher.outcome import RunOutcome
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


def run_ray(plan: Plan, run_dir: Path, progress_enabled: bool | None = None,
            poll_seconds: float = 0.5) -> RunOutcome:
    import ray

    cfg = plan.config
    ensure_ray(cfg)
    (stream,) = plan.streams
    res = cfg.resources
    # Named actors: trainers find the stream by name, and tests and operators find both.
    tag = f"{cfg.run.name}-{stream.stream_id}-{uuid.uuid4().hex[:8]}"
    stream_name = f"thresher-stream-{tag}"
    stream_actor = stream_actor_cls().options(name=stream_name).remote(cfg, stream, str(run_dir))
    harvest_ref = stream_actor.harvest.remote()
    trainers = [
        trainer_actor_cls()
        .options(name=f"thresher-trainer-{tag}-{t.trainer_id}", num_cpus=res.cpus_per_trainer,
                 num_gpus=res.gpus_per_trainer)
        .remote(cfg, stream.stream_id, t, str(run_dir), stream_name)
        for t in stream.trainers
    ]
    pending = {t.run.remote(): t for t in trainers}
    steps_total = -(-cfg.train.tokens // cfg.train.batch_size)
    progress = Progress(cfg.train.tokens + cfg.stream.holdout_rows,
                        {t.trainer_id: steps_total for t in stream.trainers},
                        enabled=progress_enabled)
    results: list[TrainerResult] = []
    try:
        waiting = [*list(pending), harvest_ref]
        while pending:
            done, waiting = ray.wait(waiting, timeout=poll_seconds)
            for ref in done:
                if ref == harvest_ref:
                    ray.get(ref)  # raises if the harvest failed
                    continue
                results.append(ray.get(ref))
                pending.pop(ref)
            info = ray.get(stream_actor.progress.remote())
            progress.update(info["rows"], info["steps"])
        harvest = ray.get(harvest_ref)
        log = ray.get(stream_actor.log_counters.remote())
        stream_stats = ray.get(stream_actor.stats.remote())
    finally:
        progress.close()
        for actor in trainers:
            ray.kill(actor)
        ray.kill(stream_actor)
    log.pop("held_history", None)
    results.sort(key=lambda r: r.trainer_id)
    return RunOutcome(results=results, harvest=harvest, log=log,
                      stream_stats=stream_stats.to_dict() if stream_stats else {})
