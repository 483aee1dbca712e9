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

import torch

from thresher.analysis.curves import CurveLog
from thresher.analysis.evaluate import TrainerResult
from thresher.config import (
    Config,
    Plan,
    StreamPlan,
    harvest_resources,
    torch_threads,
)
from thresher.devices import torch_device
from thresher.harvest.inputs import close_inputs, open_inputs
from thresher.harvest.local import LocalHarvest
from thresher.outcome import RunOutcome, StreamOutcome
from thresher.progress import Progress
from thresher.session import TrainerSession
from thresher.stream.block import ActivationBlock
from thresher.stream.chunker import load_pieces
from thresher.stream.pump import Pump
from thresher.stream.reader import fetch_group
from thresher.stream.stats import StreamStats, estimate_hook_stats


def run_inline(plan: Plan, run_dir: Path, curves: CurveLog,
               progress_enabled: bool | None = None) -> RunOutcome:
    cfg = plan.config
    steps_total = -(-cfg.train.rows // cfg.train.batch_size)
    progress = Progress(len(plan.streams) * (cfg.train.rows + cfg.stream.holdout_rows),
                        {t.trainer_id: steps_total for t in plan.trainers},
                        enabled=progress_enabled)
    outcome = RunOutcome(results=[], streams={})
    rows_before = 0
    try:
        for stream in plan.streams:
            results, streamed = _run_stream(cfg, stream, run_dir, curves, progress, rows_before)
            outcome.results += results
            outcome.streams[stream.stream_id] = streamed
            rows_before += int(streamed.harvest["rows"])
    finally:
        progress.close()
    return outcome


def _run_stream(cfg: Config, stream: StreamPlan, run_dir: Path, curves: CurveLog,
                progress: Progress, rows_before: int
                ) -> tuple[list[TrainerResult], StreamOutcome]:
    source = stream.source
    harvest_threads = torch_threads(cfg, "harvester", source)
    train_threads = torch_threads(cfg, "trainer")

    start = time.perf_counter()
    inputs = open_inputs(cfg, stream, run_dir)
    torch.set_num_threads(harvest_threads)
    device = torch_device(harvest_resources(cfg, source).gpus_per_harvester,
                          source.backbone.device, role="harvester")
    harvest = LocalHarvest(cfg, source, device=device, inputs=inputs)
    # Inline, a block's handle is the block itself.
    pump: Pump[ActivationBlock, dict[str, StreamStats]] = Pump(
        cfg, stream, estimate=lambda pieces: estimate_hook_stats(load_pieces(pieces, list)))
    harvested = iter(harvest)
    harvest_seconds = time.perf_counter() - start

    sessions: dict[str, TrainerSession] = {}
    while not sessions or not all(s.done for s in sessions.values()):
        moved = False
        # Harvest while it is useful: room in the log and rows still wanted.
        torch.set_num_threads(harvest_threads)
        t0 = time.perf_counter()
        while not pump.harvest_done and not pump.pending:
            item = None if pump.chunker.done else next(harvested, None)
            if item is None:
                pump.finish_harvest()
                break
            pump.add(item.block, len(item.block), item.report)
            moved = True
        harvest_seconds += time.perf_counter() - t0

        if not sessions and pump.stats is not None:
            for t in stream.trainers:
                sessions[t.trainer_id] = TrainerSession(
                    cfg, stream.stream_id, t, pump.stats[t.hook], run_dir,
                    device=torch_device(cfg.resources.gpus_per_trainer),
                    fetch=lambda g: fetch_group(pump.log, g), load=list,
                    commit=lambda c, tid=t.trainer_id: pump.commit(tid, c),
                    on_points=curves.add)

        torch.set_num_threads(train_threads)
        for session in sessions.values():
            if session.done:
                continue
            before = (session.trainer.step, pump.log.counters.released)
            session.advance(lambda: pump.log.full)
            moved |= (session.trainer.step, pump.log.counters.released) != before or session.done
        progress.update(rows_before + pump.counters.rows,
                        {tid: s.trainer.step for tid, s in sessions.items()}, curves.newest)
        if not moved:
            raise RuntimeError(
                f"stream {stream.stream_id} stalled: no trainer can step and the pump cannot "
                f"append; log holds {pump.log.held}/{pump.log.capacity} chunks. Raise "
                "stream.capacity_chunks (it must hold 2 x mix_chunks) or lower "
                "stream.mix_chunks")

    holdout = load_pieces(pump.chunker.holdout, list)
    results = [session.finish(holdout.select(session.plan.hook))
               for session in sessions.values()]
    close_inputs(inputs, stream, run_dir, pump.counters)
    counters = pump.counters.to_dict()
    counters["seconds"] = harvest_seconds
    log = {"appended": pump.log.counters.appended, "released": pump.log.counters.released,
           "peak_held": pump.log.counters.peak_held, "capacity": pump.log.capacity}
    return results, StreamOutcome(harvest=counters, log=log, stats=pump.stats)
