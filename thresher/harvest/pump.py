"""The pump: harvested blocks in, chunk handles into the broadcast log.

`Pump` is the plain logic (Chunker + BroadcastLog + counters), used as is by the inline
executor. `StreamActor` places it on Ray: it builds the inputs, runs the Ray Data harvest
(`map_batches` on a fixed `ActorPoolStrategy`), `ray.put`s each chunk — so it owns the chunks —
and serves the log to the trainer actors. It is a threaded actor: the harvest loop runs in one
call while trainers read groups and commit cursors in others.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic

import numpy as np

from thresher.block import ActivationBlock
from thresher.config import Config, StreamPlan, torch_threads
from thresher.harvest.stream import BroadcastLog, Chunker, Cursor, Group, Handle, StreamStats


@dataclass
class HarvestCounters:
    forward_calls: int = 0
    blocks: int = 0
    rows: int = 0
    examples: set[int] = field(default_factory=set)
    seconds: float = 0.0
    unreadable_inputs: int = 0  # images or recordings skipped because they could not be read
    # Wall-clock times (epoch seconds) the pump started and the harvest ended: show whether
    # the streams of a run ran one after another or together.
    started_at: float = field(default_factory=time.time)
    finished_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"forward_calls": self.forward_calls, "blocks": self.blocks, "rows": self.rows,
                "examples": len(self.examples), "seconds": self.seconds,
                "unreadable_inputs": self.unreadable_inputs, "started_at": self.started_at,
                "finished_at": self.finished_at}


class Pump(Generic[Handle]):
    """Chunks harvested blocks and appends them to the log as room frees up."""

    def __init__(self, cfg: Config, stream: StreamPlan, put: Callable[[ActivationBlock], Handle]):
        s, t = cfg.stream, cfg.train
        steps = -(-t.tokens // t.batch_size)
        self.chunker = Chunker(s.chunk_rows, s.holdout_rows, s.norm_rows,
                               wanted_rows=steps * t.batch_size)
        self.log: BroadcastLog[Handle] = BroadcastLog(
            s.capacity_chunks, s.mix_chunks, cfg.run.seed,
            [t.trainer_id for t in stream.trainers])
        self.put = put
        self.pending: deque[ActivationBlock] = deque()
        self.counters = HarvestCounters()
        self.harvest_done = False

    def add(self, block: ActivationBlock, forward_calls: np.ndarray | None = None,
            unreadable: int = 0) -> None:
        self.counters.unreadable_inputs += unreadable
        self.counters.blocks += 1
        self.counters.rows += len(block)
        self.counters.examples.update(np.unique(block.example_id).tolist())
        if forward_calls is not None:
            self.counters.forward_calls += len(np.unique(forward_calls))
        self.pending.extend(self.chunker.add(block))
        self.flush()

    def finish_harvest(self) -> None:
        self.harvest_done = True
        self.counters.finished_at = time.time()
        self.pending.extend(self.chunker.finish())
        self.flush()

    def flush(self) -> None:
        """Append pending chunks while the log has room; finish the log when all are in."""
        while self.pending:
            if self.log.full and not self.log.release():
                break
            chunk = self.pending.popleft()
            self.log.append(self.put(chunk), len(chunk))
        if self.harvest_done and not self.pending and not self.log.finished:
            self.log.finish()
            self.log.release()

    @property
    def stats(self) -> dict[str, StreamStats] | None:
        """Each hook's input scale and decoder-bias estimate, once the first rows are in."""
        return self.chunker.stats

    def commit(self, trainer_id: str, cursor: Cursor) -> list[Handle]:
        released = self.log.commit(trainer_id, cursor)
        self.flush()
        return released


# ------------------------------------------------------------------------------------------
# Ray edge
# ------------------------------------------------------------------------------------------

# What a trainer gets from StreamActor.group: ("ready", Group), ("wait", log_full), ("end", None)
GroupReply = tuple[str, Any]


def _stream_actor_cls() -> Any:
    import ray

    @ray.remote(num_cpus=0, max_concurrency=16)
    class StreamActor:
        """Pump + broadcast log of one stream, on the harvest node; owns every chunk it puts."""

        def __init__(self, cfg: Config, stream: StreamPlan, run_dir: str) -> None:
            self.cfg, self.stream, self.run_dir = cfg, stream, run_dir
            self.lock = threading.Condition()
            self.pump: Pump[Any] = Pump(cfg, stream, put=lambda b: ray.put(b.to_columns()))
            self.error: str | None = None
            self.progress_steps: dict[str, int] = {t.trainer_id: 0 for t in stream.trainers}
            self.holdout_ref: Any = None
            self.planned_rows = 0

        def harvest(self) -> dict[str, Any]:
            """Run the whole harvest; returns the harvest counters. Trainers read meanwhile."""
            try:
                return self._harvest()
            except BaseException as exc:  # surface to trainers waiting on the log
                with self.lock:
                    self.error = f"{type(exc).__name__}: {exc}"
                    self.lock.notify_all()
                raise

        def _harvest(self) -> dict[str, Any]:
            from thresher.config import config_dir
            from thresher.harvest.harvester import Harvester
            from thresher.harvest.inputs import prepare_inputs, write_manifest
            from thresher.harvest.vision import decode_stage, decode_stage_remote_args

            start = time.perf_counter()
            source = self.stream.source
            inputs = prepare_inputs(source, self.cfg.run.seed, config_dir(self.cfg))
            write_manifest(self.run_dir, inputs.manifest)
            self.planned_rows = inputs.n_tokens
            self.pump.counters.unreadable_inputs += inputs.unreadable

            ctx = ray.data.DataContext.get_current()
            ctx.execution_options.preserve_order = True  # identical chunks on every run
            ctx.enable_progress_bars = False
            ctx.print_on_execution_start = False
            res = self.cfg.resources
            # One block per input batch: each harvest output reaches the pump on its own, so
            # trainers start on the first chunk instead of waiting for a bundle of forwards.
            ds = ray.data.from_items(inputs.batches,
                                     override_num_blocks=max(1, len(inputs.batches)))
            if inputs.decode is not None:
                # Decode and preprocess images in CPU tasks ahead of the backbone actors.
                ds = ds.map_batches(decode_stage, fn_kwargs={"spec": inputs.decode},
                                    batch_size=1, num_cpus=1,
                                    ray_remote_args_fn=decode_stage_remote_args)
            ds = ds.map_batches(
                Harvester,
                fn_constructor_kwargs={"source": source, "device": _device(res.gpus_per_harvester),
                                       "threads": torch_threads(self.cfg, "harvester"),
                                       "base_dir": str(config_dir(self.cfg))},
                batch_size=1,
                num_cpus=res.cpus_per_harvester,
                num_gpus=res.gpus_per_harvester,
                compute=ray.data.ActorPoolStrategy(size=res.harvesters),
            )
            for cols in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
                forward = cols.pop("forward_call")
                unreadable = int(np.sum(cols.pop("unreadable", 0)))
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
            return self.pump.counters.to_dict()

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
                        "peak_held": log.counters.peak_held, "capacity": log.capacity}

        def log_counters(self) -> dict[str, Any]:
            with self.lock:
                c = self.pump.log.counters
                return {"appended": c.appended, "released": c.released,
                        "peak_held": c.peak_held, "capacity": self.pump.log.capacity,
                        "held_history": list(c.held_history)}

        def _raise_if_failed(self) -> None:
            if self.error is not None:
                raise RuntimeError(f"the harvest of stream {self.stream.stream_id} failed: "
                                   f"{self.error}")

    return StreamActor


def _device(gpus: float) -> str:
    return "cuda" if gpus > 0 else "cpu"


_STREAM_ACTOR: Any = None


def stream_actor_cls() -> Any:
    """The Ray actor class, built on first use so importing this module never needs Ray."""
    global _STREAM_ACTOR
    if _STREAM_ACTOR is None:
        _STREAM_ACTOR = _stream_actor_cls()
    return _STREAM_ACTOR
