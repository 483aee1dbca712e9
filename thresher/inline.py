"""The inline executor: the same plain classes as the Ray pipeline, in one process.

For stepping through with a debugger and for a single-GPU box without Ray. Streams run one
after another. Within a stream it interleaves the roles cooperatively: harvest until the log is
full (or every row wanted is in), then let each trainer step until it needs a group that is not
there yet. Same config and seed give the same chunks, the same schedule and therefore the same
SAE weights as the Ray executor.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from thresher.analysis.evaluate import TrainerResult, trainer_result
from thresher.config import (
    Config,
    Plan,
    StreamPlan,
    config_dir,
    harvest_resources,
    torch_threads,
)
from thresher.harvest.harvester import Harvester
from thresher.harvest.inputs import decode_batch, prepare_inputs, write_manifest
from thresher.outcome import RunOutcome, StreamOutcome
from thresher.progress import Progress
from thresher.stream.block import ActivationBlock
from thresher.stream.log import Group
from thresher.stream.pump import Pump
from thresher.stream.reader import BatchReader, EndOfStream, NotReady
from thresher.train.loop import TrainLoop
from thresher.train.trainer import Trainer


def _device(gpus: float) -> str:
    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


def run_inline(plan: Plan, run_dir: Path, progress_enabled: bool | None = None) -> RunOutcome:
    cfg = plan.config
    steps_total = -(-cfg.train.tokens // cfg.train.batch_size)
    progress = Progress(len(plan.streams) * (cfg.train.tokens + cfg.stream.holdout_rows),
                        {t.trainer_id: steps_total for t in plan.trainers},
                        enabled=progress_enabled)
    outcome = RunOutcome(results=[], streams={})
    rows_before = 0
    try:
        for stream in plan.streams:
            results, streamed = _run_stream(cfg, stream, run_dir, progress, rows_before)
            outcome.results += results
            outcome.streams[stream.stream_id] = streamed
            rows_before += int(streamed.harvest["rows"])
    finally:
        progress.close()
    return outcome


def _run_stream(cfg: Config, stream: StreamPlan, run_dir: Path, progress: Progress,
                rows_before: int) -> tuple[list[TrainerResult], StreamOutcome]:
    source = stream.source
    res = cfg.resources
    harvest_threads = torch_threads(cfg, "harvester")
    train_threads = torch_threads(cfg, "trainer")

    start = time.perf_counter()
    inputs = prepare_inputs(source, cfg.run.seed, config_dir(cfg))
    write_manifest(run_dir, stream.stream_id, inputs.manifest)
    torch.set_num_threads(harvest_threads)
    gpus = harvest_resources(cfg, source).gpus_per_harvester
    harvester = Harvester(source, device=_device(gpus), threads=harvest_threads,
                          base_dir=config_dir(cfg))
    pump: Pump[ActivationBlock] = Pump(cfg, stream, put=lambda block: block)
    pump.counters.unreadable_inputs += inputs.unreadable
    batches = iter(inputs.batches)
    harvest_seconds = time.perf_counter() - start

    def fetch(g: int) -> Group[ActivationBlock]:
        if pump.log.at_end(g):
            raise EndOfStream
        group = pump.log.group(g)
        if group is None:
            raise NotReady
        return group

    loops: dict[str, TrainLoop] = {}
    hooks: dict[str, str] = {}
    train_start: dict[str, float] = {}
    while not loops or not all(loop.done for loop in loops.values()):
        moved = False
        # Harvest while it is useful: room in the log and rows still wanted.
        torch.set_num_threads(harvest_threads)
        t0 = time.perf_counter()
        while not pump.harvest_done and not pump.pending:
            item = next(batches, None)
            if item is None or pump.chunker.done:
                pump.finish_harvest()
                break
            before = harvester.unreadable
            block = harvester.harvest(decode_batch(inputs, item))  # CPU stage, then forward
            pump.add(block, np.array([harvester.forward_calls]), harvester.unreadable - before)
            moved = True
        harvest_seconds += time.perf_counter() - t0

        if not loops and pump.stats is not None:
            for t in stream.trainers:
                trainer = Trainer(t.trainer_id, t.saes, cfg.train, pump.stats[t.hook], run_dir,
                                  device=_device(res.gpus_per_trainer), hook_name=t.hook)
                reader = BatchReader(fetch, lambda blocks, h=t.hook: [b.select(h) for b in blocks],
                                     cfg.train.batch_size, trainer.resumed_cursor)
                loops[t.trainer_id] = TrainLoop(
                    trainer, reader, commit=lambda c, tid=t.trainer_id: pump.commit(tid, c),
                    checkpoint_every=cfg.train.checkpoint_every)
                hooks[t.trainer_id] = t.hook
                train_start[t.trainer_id] = time.perf_counter()

        torch.set_num_threads(train_threads)
        for loop in loops.values():
            if loop.done:
                continue
            before_step = (loop.trainer.step, pump.log.counters.released)
            status = loop.advance()
            if status == "blocked" and pump.log.full:
                loop.checkpoint()  # the pump waits on us: commit so chunks can go
            moved |= (loop.trainer.step, pump.log.counters.released) != before_step or loop.done
        progress.update(rows_before + pump.counters.rows,
                        {tid: loop.trainer.step for tid, loop in loops.items()})
        if not moved:
            raise RuntimeError(
                f"stream {stream.stream_id} stalled: no trainer can step and the pump cannot "
                f"append; log holds {pump.log.held}/{pump.log.capacity} chunks. Raise "
                "stream.capacity_chunks (it must hold 2 x mix_chunks) or lower "
                "stream.mix_chunks")

    holdout = pump.chunker.holdout_block()
    results: list[TrainerResult] = []
    for trainer_id, loop in loops.items():
        loop.trainer.export()
        seconds = time.perf_counter() - train_start[trainer_id]
        results.append(trainer_result(cfg, stream.stream_id, loop.trainer,
                                      holdout.select(hooks[trainer_id]),
                                      loop.counters.to_dict(), seconds))
    counters = pump.counters.to_dict()
    counters["seconds"] = harvest_seconds
    log = {"appended": pump.log.counters.appended, "released": pump.log.counters.released,
           "peak_held": pump.log.counters.peak_held, "capacity": pump.log.capacity}
    return results, StreamOutcome(harvest=counters, log=log, stats=pump.stats)
