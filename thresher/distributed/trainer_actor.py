"""The trainer actor: a thin Ray wrapper that runs a TrainerSession against a StreamActor."""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import torch

from thresher.config import Config, TrainerPlan, torch_threads
from thresher.devices import torch_device
from thresher.distributed.blocks import load_blocks
from thresher.stream.block import ActivationBlock
from thresher.stream.chunker import load_pieces
from thresher.stream.log import Group
from thresher.stream.reader import EndOfStream, NotReady

log = logging.getLogger(__name__)

REPORT_SECONDS = 0.5  # a trainer tells its stream its step count at most this often


@functools.cache
def trainer_actor_cls() -> Any:
    """The Ray actor class, built on first use so importing this module never needs Ray."""
    import ray

    @ray.remote(max_restarts=-1, max_task_retries=-1)
    class TrainerActor:
        # Constructor arguments are small values (config dataclasses, the stream actor's name),
        # never tensors or handles, which Ray would keep in the object store (ray#53727): a
        # restarted actor re-runs __init__ from them and resumes from its checkpoint.
        def __init__(self, cfg: Config, stream_id: str, plan: TrainerPlan, run_dir: str,
                     stream_actor_name: str) -> None:
            self.cfg, self.stream_id, self.plan = cfg, stream_id, plan
            self.run_dir = run_dir
            self.stream = ray.get_actor(stream_actor_name)
            self.log_full = False
            # Ray set OMP_NUM_THREADS from num_cpus (1 when fractional): set ours explicitly.
            torch.set_num_threads(torch_threads(cfg, "trainer"))
            self.device = torch_device(cfg.resources.gpus_per_trainer,
                                       role=f"trainer {plan.trainer_id}")

        def placement(self) -> dict[str, Any]:
            """Where this actor runs: its node and the GPUs Ray assigned it."""
            return {"node_id": ray.get_runtime_context().get_node_id(),
                    "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

        def run(self) -> Any:
            from thresher.session import TrainerSession

            tid, hook = self.plan.trainer_id, self.plan.hook
            stats = None
            while stats is None:
                stats = ray.get(self.stream.stats.remote(hook))
            session: TrainerSession | None = None
            reported = 0.0

            def report_step(step: int) -> None:
                """Fire and forget, at most every REPORT_SECONDS: the stream keeps the newest
                step it heard of (for progress and restarts). A call per step cost the trainer
                a sixth of its Python time (py-spy, 2 cores)."""
                nonlocal reported
                if time.monotonic() - reported >= REPORT_SECONDS:
                    reported = time.monotonic()
                    self.stream.report_step.remote(tid, step)

            def fetch(g: int) -> Group[Any]:
                step = session.trainer.step if session is not None else 0
                status, payload = ray.get(self.stream.group.remote(tid, g, step))
                if status == "end":
                    raise EndOfStream
                if status == "wait":
                    self.log_full = bool(payload)
                    raise NotReady
                return payload

            session = TrainerSession(
                self.cfg, self.stream_id, self.plan, stats, self.run_dir, self.device,
                fetch=fetch,
                # Only this trainer's hook is read from each block in the object store.
                load=lambda refs: load_blocks(refs, hook),
                commit=lambda c: ray.get(self.stream.commit.remote(tid, c)),
                # The next group is fetched and gathered while this one trains.
                prefetch=True,
                on_step=report_step,
                # The driver takes them from the stream actor: wandb and the curves file live
                # there, so this node needs neither wandb nor its login.
                on_points=lambda points: self.stream.report_curve_points.remote(points))
            # A restarted actor lands here again: the stream records the steps it redoes.
            ray.get(self.stream.trainer_started.remote(tid, session.trainer.step))
            while session.advance(lambda: self.log_full) == "blocked":
                pass
            pieces = ray.get(self.stream.holdout.remote())
            holdout: ActivationBlock = load_pieces(pieces, lambda refs: load_blocks(refs, hook))
            return session.finish(holdout, self.placement())

    return TrainerActor
