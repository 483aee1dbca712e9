"""The trainer actor: a TrainerSession on Ray, reading its stream through its StreamActor.

`ActorTrainerStream` is the stream as a trainer sees it (`thresher.session.TrainerStream`)
through Ray: groups and commits are calls to the stream actor, blocks are read from the object
store (only the trainer's hook), steps and curve points go out without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from thresher.analysis.evaluate import TrainerPlacement, TrainerResult
from thresher.config import Config, TrainerPlan, torch_threads
from thresher.devices import torch_device
from thresher.distributed.blocks import load_blocks
from thresher.harvest.service import GroupPending, group_of
from thresher.stream.block import ActivationBlock
from thresher.stream.chunker import Chunk, load_pieces
from thresher.stream.log import Cursor, Group

REPORT_SECONDS = 0.5  # a trainer tells its stream its step count at most this often

Ref = Any  # Ray's ObjectRef of a harvest output's columns


class ActorTrainerStream:
    """A trainer's view of its stream actor. The next group is fetched and gathered while this
    one trains (`prefetch`). Steps are reported at most every REPORT_SECONDS, fire and forget:
    the stream keeps the newest it heard of, for progress and restarts (a call per step costs a
    trainer a share of its Python time: benchmarks/ray_vs_inline.py). Curve points go to the
    stream actor, whence the driver takes them: wandb and the curves file live there, so this
    node needs neither wandb nor its login."""

    prefetch = True

    def __init__(self, stream: Any, trainer_id: str, hook: str) -> None:
        self.stream, self.trainer_id, self.hook = stream, trainer_id, hook
        self.step = 0
        self.log_full = False
        self.reported_at = 0.0
        self.points_sent: list[Any] = []  # refs of the curve-point calls, until they land

    def fetch(self, g: int) -> Group[Chunk[Ref]]:
        import ray

        reply = ray.get(self.stream.group.remote(self.trainer_id, g, self.step))
        if isinstance(reply, GroupPending):
            self.log_full = reply.log_full
        return group_of(reply)

    def load(self, handles: Sequence[Ref]) -> list[ActivationBlock]:
        return load_blocks(handles, self.hook)  # only this trainer's hook of each block

    def commit(self, cursor: Cursor) -> None:
        import ray

        ray.get(self.stream.commit.remote(self.trainer_id, cursor))

    def step_taken(self, step: int) -> None:
        self.step = step
        if time.monotonic() - self.reported_at >= REPORT_SECONDS:
            self.reported_at = time.monotonic()
            self.stream.report_step.remote(self.trainer_id, step)

    def add_curve_points(self, points: list[dict[str, Any]]) -> None:
        self.points_sent.append(self.stream.report_curve_points.remote(points))

    def flush(self) -> None:
        """Wait until every curve point sent is with the stream actor."""
        import ray

        ray.get(self.points_sent)
        self.points_sent = []


class TrainerActor:
    """One trainer of a stream, restartable: constructor arguments are small values (config
    dataclasses, the stream actor's name), never tensors or handles, which Ray would keep in
    the object store (ray#53727); a restarted actor re-runs __init__ from them and resumes
    from its checkpoint."""

    def __init__(self, cfg: Config, stream_id: str, plan: TrainerPlan, run_dir: str,
                 stream_actor_name: str) -> None:
        self.cfg, self.stream_id, self.plan = cfg, stream_id, plan
        self.run_dir = run_dir
        self.stream_actor_name = stream_actor_name
        # Ray set OMP_NUM_THREADS from num_cpus (1 when fractional): set ours explicitly.
        torch.set_num_threads(torch_threads(cfg, "trainer"))
        self.device = torch_device(cfg.resources.gpus_per_trainer,
                                   role=f"trainer {plan.trainer_id}")

    def placement(self) -> TrainerPlacement:
        """Where this actor runs: its node and the GPUs Ray assigned it."""
        import ray

        return TrainerPlacement(node_id=ray.get_runtime_context().get_node_id(),
                                gpu_ids=tuple(str(g) for g in ray.get_gpu_ids()))

    def run(self) -> TrainerResult:
        import ray

        from thresher.session import TrainerSession

        actor = ray.get_actor(self.stream_actor_name)
        tid, hook = self.plan.trainer_id, self.plan.hook
        stats = None
        while stats is None:
            stats = ray.get(actor.hook_stats.remote(hook))
        stream = ActorTrainerStream(actor, tid, hook)
        session = TrainerSession(self.cfg, self.stream_id, self.plan, stats, self.run_dir,
                                 self.device, stream=stream)
        stream.step = session.trainer.step
        # A restarted actor lands here again: the stream records the steps it redoes.
        ray.get(actor.trainer_started.remote(tid, session.trainer.step))
        while session.advance() == "blocked":
            pass
        stream.flush()  # the driver has every live curve point once this trainer returns
        pieces = ray.get(actor.holdout.remote())
        holdout = load_pieces(pieces, stream.load)
        return session.finish(holdout, self.placement())


def trainer_actor_class() -> Any:
    """`TrainerActor` as a Ray actor class that Ray restarts, retrying its calls."""
    import ray

    return ray.remote(max_restarts=-1, max_task_retries=-1)(TrainerActor)
