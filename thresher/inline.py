"""The inline executor: the same plain classes as the Ray pipeline, in one process.

For stepping through with a debugger and for a single-GPU box without Ray. Streams run one
after another. Each stream's `StreamService` (thresher/harvest/service.py), the one the Ray
stream actor wraps, is driven cooperatively: feed it harvest outputs until the log is full (or
every row wanted is in), then let each trainer step until it needs a group that is not there
yet. Same config and seed give the same chunks, the same schedule and therefore the same SAE
weights as the Ray executor.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from thresher.analysis.curves import CurveLog
from thresher.config import Config, Plan, StreamPlan, harvest_resources, torch_threads
from thresher.devices import torch_device
from thresher.harvest.inputs import close_inputs, open_inputs
from thresher.harvest.local import LocalHarvest
from thresher.harvest.report import StreamPlacement
from thresher.harvest.service import LocalTrainerStream, StreamService
from thresher.outcome import RunOutcome, StreamOutcome, TrainerOutcome
from thresher.progress import Progress
from thresher.session import TrainerSession
from thresher.stream.block import ActivationBlock
from thresher.stream.chunker import Piece, load_pieces
from thresher.stream.stats import StreamStats, estimate_hook_stats

# Inline, a block's handle is the block itself.
LocalService = StreamService[ActivationBlock, dict[str, StreamStats]]


def run_inline(plan: Plan, run_dir: Path, curves: CurveLog,
               progress_enabled: bool | None = None) -> RunOutcome:
    progress = Progress.of_plan(plan, enabled=progress_enabled)
    outcome = RunOutcome(trainers=[], streams={})
    rows_before = 0
    try:
        for stream in plan.streams:
            trainers, streamed = _run_stream(plan.config, stream, run_dir, curves, progress,
                                             rows_before)
            outcome.trainers += trainers
            outcome.streams[stream.stream_id] = streamed
            rows_before += streamed.harvest.rows
    finally:
        progress.close()
    return outcome


def _estimate(pieces: list[Piece[ActivationBlock]]) -> dict[str, StreamStats]:
    return estimate_hook_stats(load_pieces(pieces, list))


def _run_stream(cfg: Config, stream: StreamPlan, run_dir: Path, curves: CurveLog,
                progress: Progress, rows_before: int
                ) -> tuple[list[TrainerOutcome], StreamOutcome]:
    source = stream.source
    harvest_threads = torch_threads(cfg, "harvester", source)
    train_threads = torch_threads(cfg, "trainer")
    resources = harvest_resources(cfg, source)

    start = time.perf_counter()
    service: LocalService = StreamService(cfg, stream, estimate=_estimate)
    inputs = open_inputs(cfg, stream, run_dir)
    service.planned_rows = inputs.planned_rows
    torch.set_num_threads(harvest_threads)
    device = torch_device(resources.gpus_per_harvester, source.backbone.device, role="harvester")
    outputs = iter(LocalHarvest(cfg, source, device=device, inputs=inputs))
    harvest_seconds = time.perf_counter() - start

    sessions: dict[str, TrainerSession] = {}
    while not sessions or not all(s.done for s in sessions.values()):
        torch.set_num_threads(harvest_threads)
        t0 = time.perf_counter()
        moved = service.feed(outputs)  # while the log has room and rows are wanted
        harvest_seconds += time.perf_counter() - t0
        if not sessions and (stats := service.stats_estimate(timeout=0)) is not None:
            sessions = _start_sessions(cfg, stream, run_dir, service, stats)

        torch.set_num_threads(train_threads)
        for session in sessions.values():
            if session.done:
                continue
            before = (session.trainer.step, service.log_summary().released)
            session.advance()
            moved |= (session.trainer.step, service.log_summary().released) != before \
                or session.done
        curves.add(service.take_curve_points())
        state = service.progress()
        progress.update(rows_before + state.rows, state.steps, curves.newest)
        if not moved:
            raise RuntimeError(
                f"stream {stream.stream_id} stalled: no trainer can step and the pump cannot "
                f"append; log holds {state.held}/{state.capacity} chunks. Raise "
                "stream.capacity_chunks (it must hold 2 x mix_chunks) or lower "
                "stream.mix_chunks")

    holdout = load_pieces(service.holdout(timeout=0), list)
    results = [session.finish(holdout.select(session.plan.hook))
               for session in sessions.values()]
    close_inputs(inputs, stream, run_dir, service.counters)
    service.counters.seconds = harvest_seconds
    restarts = service.progress().restarts
    trainers = [TrainerOutcome(r, restarts[r.trainer_id]) for r in results]
    placement = StreamPlacement(harvesters=1, cpus_per_harvester=resources.cpus_per_harvester,
                                gpus_per_harvester=resources.gpus_per_harvester)
    return trainers, StreamOutcome(harvest=service.counters, log_summary=service.log_summary(),
                                   stats=service.pump.stats, placement=placement)


def _start_sessions(cfg: Config, stream: StreamPlan, run_dir: Path, service: LocalService,
                    stats: dict[str, StreamStats]) -> dict[str, TrainerSession]:
    sessions = {}
    for t in stream.trainers:
        sessions[t.trainer_id] = TrainerSession(
            cfg, stream.stream_id, t, stats[t.hook], run_dir,
            device=torch_device(cfg.resources.gpus_per_trainer),
            stream=LocalTrainerStream(service, t.trainer_id))
        service.trainer_started(t.trainer_id, sessions[t.trainer_id].trainer.step)
    return sessions
