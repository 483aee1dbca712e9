"""What an executor hands back, and the last writes of a run that both executors share."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from thresher import uri_io
from thresher.analysis.curves import CurveLog
from thresher.analysis.evaluate import TrainerResult, write_run_stats
from thresher.config import Plan
from thresher.harvest.report import HarvestCounters, PumpCost, StreamPlacement
from thresher.harvest.service import LogSummary, Restart
from thresher.rundir import write_run_json
from thresher.stream.stats import StreamStats

log = logging.getLogger(__name__)


@dataclass
class StreamOutcome:
    """One stream's harvest counters, broadcast-log summary, per-hook input statistics and
    placement."""

    harvest: HarvestCounters
    log_summary: LogSummary
    stats: dict[str, StreamStats] | None
    placement: StreamPlacement
    pump: PumpCost = field(default_factory=PumpCost)
    # The streams already running when the executor started this one (Ray; inline: none).
    started_beside: tuple[str, ...] = ()

    def harvest_dict(self) -> dict[str, Any]:
        """run.json's `streams.<id>.harvest`: the counters, placement and pump cost."""
        placement = asdict(self.placement)
        placement["harvester_nodes"] = list(self.placement.harvester_nodes)
        return {**self.harvest.to_dict(), **placement, **asdict(self.pump)}

    def to_dict(self) -> dict[str, Any]:
        stats = {hook: {k: v for k, v in s.to_dict().items() if k != "center"}
                 for hook, s in (self.stats or {}).items()}
        return {"harvest": self.harvest_dict(), "log": asdict(self.log_summary),
                "stream_stats": stats, "started_beside": list(self.started_beside)}


@dataclass(frozen=True)
class TrainerOutcome:
    """One trainer's result and the restarts its stream recorded for it."""

    result: TrainerResult
    restarts: tuple[Restart, ...] = ()

    def to_dict(self, harvest_copies: float) -> dict[str, Any]:
        """run.json's `trainers.<id>`; `harvest_copies`: its stream's copies of a row."""
        counters = self.result.counters
        if counters is None:
            raise ValueError(f"trainer {self.result.trainer_id} has no counters to record")
        copies = {"harvest": harvest_copies, **asdict(counters.copies_per_row)}
        return {**asdict(counters.loop), "gather_seconds": counters.gather_seconds,
                "copies_per_row": {**copies, "total": sum(copies.values())},
                "node_id": counters.placement.node_id,
                "gpu_ids": list(counters.placement.gpu_ids),
                "seconds": self.result.seconds,
                # Steps redone after a restart: at most one checkpoint interval each.
                "restarts": len(self.restarts),
                "restart_log": [asdict(r) for r in self.restarts],
                "steps_lost": sum(r.steps_lost for r in self.restarts)}


# The harvest counters summed over streams in run.json's `harvest` (per-row figures, times of
# day and placement stay with their stream).
HARVEST_TOTALS = ("forward_calls", "blocks", "rows", "examples", "seconds", "unreadable_inputs",
                  "nonfinite_rows", "pump_cpu_seconds", "pump_rss_growth_bytes")


@dataclass
class RunOutcome:
    trainers: list[TrainerOutcome]
    streams: dict[str, StreamOutcome]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def results(self) -> list[TrainerResult]:
        return [t.result for t in self.trainers]

    def harvest_totals(self) -> dict[str, float]:
        """Counters summed over streams (harvest seconds too: streams may have overlapped)."""
        per_stream = [stream.harvest_dict() for stream in self.streams.values()]
        return {key: sum(h[key] for h in per_stream) for key in HARVEST_TOTALS}

    def log_totals(self) -> dict[str, int]:
        """Chunks appended and released over all streams, and the fullest any log ever was."""
        logs = [stream.log_summary for stream in self.streams.values()]
        return {"appended": sum(s.appended for s in logs),
                "released": sum(s.released for s in logs),
                "peak_held": max((s.peak_held for s in logs), default=0),
                "capacity": max((s.capacity for s in logs), default=0)}


def finalize(run_dir: Path, plan: Plan, executor: str, outcome: RunOutcome,
             wall_seconds: float, curves: CurveLog) -> Path:
    """Write the Parquet statistics, the curves (with each trainer's last partial window) and
    the final run.json; end the wandb runs."""
    start = time.perf_counter()
    warn_dropped_rows(outcome)
    curves.add(row for r in outcome.results for row in r.curve_rows)
    written = write_run_stats(run_dir, outcome.results, curves.rows())
    close_curve_log(run_dir, curves, written["summary"])
    # Each trainer's stream's harvest-side copies of a row.
    harvest_copies = {t.trainer_id: outcome.streams[s.stream_id].harvest_dict()["copies_per_row"]
                      for s in plan.streams if s.stream_id in outcome.streams
                      for t in s.trainers}
    harvest = outcome.harvest_totals()
    outcome.timings.update({
        "wall": wall_seconds,
        "harvest": float(harvest["seconds"]),
        "train_steps": max((r.counters.loop.step_seconds for r in outcome.results
                            if r.counters is not None), default=0.0),
        "write_stats": time.perf_counter() - start,
    })
    write_run_json(run_dir, plan, executor, status="complete", extra={
        "harvest": harvest,
        "log": outcome.log_totals(),
        "streams": {sid: stream.to_dict() for sid, stream in outcome.streams.items()},
        "trainers": {t.result.trainer_id: t.to_dict(harvest_copies.get(t.result.trainer_id, 0.0))
                     for t in outcome.trainers},
        "timings": outcome.timings,
    })
    return run_dir


def warn_dropped_rows(outcome: RunOutcome) -> None:
    """One line per stream that skipped unreadable inputs or dropped rows holding NaN or Inf,
    naming where they came from."""
    for stream_id, stream in outcome.streams.items():
        counters = stream.harvest
        unreadable = counters.unreadable_inputs
        if unreadable:
            named = counters.unreadable_named
            more = f" and {unreadable - len(named)} more" if unreadable > len(named) else ""
            log.warning("stream %s: skipped %d unreadable input%s (named in run.json): %s%s; "
                        "to train on them, repair them and rerun with --overwrite",
                        stream_id, unreadable, "" if unreadable == 1 else "s",
                        "; ".join(named), more)
        dropped = counters.nonfinite_rows
        if dropped:
            examples = ", ".join(str(e) for e in counters.nonfinite_examples)
            log.warning("stream %s: dropped %d rows holding NaN or Inf before training, from "
                        "examples %s (rows of inputs/%s.parquet); every other row trained",
                        stream_id, dropped, examples, stream_id)


def open_curve_log(run_dir: Path, plan: Plan) -> CurveLog:
    """Where the trainers' curve points go while the run goes: stats/curves.parquet and, where
    run.wandb is on, one wandb run per SAE (off by default).

    wandb runs in the driver only: trainers forward their points here (through the stream
    actor on Ray), so no actor on a worker node needs wandb or its login; a missing or failing
    wandb only warns (WandbLogger)."""
    settings = plan.config.run.wandb
    logger = None
    if settings.mode != "disabled":
        from thresher.analysis.wandb_log import WandbLogger

        saes = {sae.sae_id: {**sae.to_dict(), "run_name": plan.config.run.name}
                for stream in plan.streams for trainer in stream.trainers
                for sae in trainer.saes}
        logger = WandbLogger(saes, mode=settings.mode, project=settings.project,
                             entity=settings.entity, group=plan.config.run.name,
                             directory=run_dir / "wandb")
    return CurveLog(run_dir / "stats" / "curves.parquet", logger)


def close_curve_log(run_dir: Path, curves: CurveLog,
                    summary_path: Path | None = None) -> None:
    """Save the curves; give wandb the final metrics (where the run got that far) and end it."""
    curves.save(force=True)
    if curves.logger is None:
        return
    import pyarrow.parquet as pq

    try:
        if summary_path is not None:
            curves.logger.log_final(pq.read_table(summary_path).to_pylist())
    finally:
        curves.logger.finish()
        uri_io.publish_tree(run_dir / "wandb")  # offline files, where the run is remote
