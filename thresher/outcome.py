"""What an executor hands back, and the last writes of a run that both executors share."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thresher import uri_io
from thresher.analysis.curves import CurveLog
from thresher.analysis.evaluate import TrainerResult, write_run_stats
from thresher.config import Plan
from thresher.rundir import write_run_json
from thresher.stream.stats import StreamStats

log = logging.getLogger(__name__)


@dataclass
class StreamOutcome:
    """One stream's harvest counters, broadcast-log counters and per-hook input statistics."""

    harvest: dict[str, Any]
    log: dict[str, Any]
    stats: dict[str, StreamStats] | None
    # The streams already running when the executor started this one (Ray; inline: none).
    started_beside: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        stats = {hook: {k: v for k, v in s.to_dict().items() if k != "center"}
                 for hook, s in (self.stats or {}).items()}
        return {"harvest": self.harvest, "log": self.log, "stream_stats": stats,
                "started_beside": list(self.started_beside)}


@dataclass
class RunOutcome:
    results: list[TrainerResult]
    streams: dict[str, StreamOutcome]
    timings: dict[str, float] = field(default_factory=dict)

    def harvest_totals(self) -> dict[str, Any]:
        """Counters summed over streams (harvest seconds too: streams may have overlapped);
        per-row figures stay with their stream (`streams.<id>.harvest`)."""
        totals: dict[str, Any] = {}
        for stream in self.streams.values():
            for key, value in stream.harvest.items():
                if key in ("started_at", "finished_at") or key.endswith("_per_row"):
                    continue
                if isinstance(value, int | float) and not isinstance(value, bool):
                    totals[key] = totals.get(key, 0) + value
        return totals

    def log_totals(self) -> dict[str, Any]:
        """Chunks appended and released over all streams, and the fullest any log ever was."""
        logs = [stream.log for stream in self.streams.values()]
        return {"appended": sum(log["appended"] for log in logs),
                "released": sum(log["released"] for log in logs),
                "peak_held": max((log["peak_held"] for log in logs), default=0),
                "capacity": max((log["capacity"] for log in logs), default=0)}


def finalize(run_dir: Path, plan: Plan, executor: str, outcome: RunOutcome,
             wall_seconds: float, curves: CurveLog) -> Path:
    """Write the Parquet statistics, the curves (with each trainer's last partial window) and
    the final run.json; end the wandb runs."""
    start = time.perf_counter()
    warn_dropped_rows(outcome)
    curves.add(row for r in outcome.results for row in r.curve_rows)
    written = write_run_stats(run_dir, outcome.results, curves.rows())
    close_curve_log(run_dir, curves, written["summary"])
    harvest = outcome.harvest_totals()
    # Each trainer's stream's harvest-side copies of a row.
    harvest_copies = {t.trainer_id: float(outcome.streams[s.stream_id].harvest
                                          .get("copies_per_row", 0.0))
                      for s in plan.streams if s.stream_id in outcome.streams
                      for t in s.trainers}
    outcome.timings.update({
        "wall": wall_seconds,
        "harvest": float(harvest.get("seconds", 0.0)),
        "train_steps": max((r.loop.get("step_seconds", 0.0) for r in outcome.results),
                           default=0.0),
        "write_stats": time.perf_counter() - start,
    })
    write_run_json(run_dir, plan, executor, status="complete", extra={
        "harvest": harvest,
        "log": outcome.log_totals(),
        "streams": {sid: stream.to_dict() for sid, stream in outcome.streams.items()},
        "trainers": {r.trainer_id: {**r.loop, "seconds": r.seconds,
                                    "copies_per_row": row_copies(harvest_copies, r)}
                     for r in outcome.results},
        "timings": outcome.timings,
    })
    return run_dir


def row_copies(harvest_copies: dict[str, float], result: TrainerResult) -> dict[str, float]:
    """Copies of a row between the backbone's output and this trainer's tensor, by stage (its
    stream's harvest side, then the trainer's own), and their total."""
    stages = {"harvest": harvest_copies.get(result.trainer_id, 0.0),
              **result.loop.get("copies_per_row", {})}
    return {**stages, "total": sum(stages.values())}


def warn_dropped_rows(outcome: RunOutcome) -> None:
    """One line per stream that skipped unreadable inputs or dropped rows holding NaN or Inf,
    naming where they came from."""
    for stream_id, stream in outcome.streams.items():
        unreadable = int(stream.harvest.get("unreadable_inputs", 0))
        if unreadable:
            named = stream.harvest.get("unreadable_named", [])
            more = f" and {unreadable - len(named)} more" if unreadable > len(named) else ""
            log.warning("stream %s: skipped %d unreadable input%s (named in run.json): %s%s; "
                        "to train on them, repair them and rerun with --overwrite",
                        stream_id, unreadable, "" if unreadable == 1 else "s",
                        "; ".join(named), more)
        dropped = int(stream.harvest.get("nonfinite_rows", 0))
        if dropped:
            examples = ", ".join(str(e) for e in stream.harvest.get("nonfinite_examples", []))
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
