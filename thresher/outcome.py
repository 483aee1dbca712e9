"""What an executor hands back, and the last writes of a run that both executors share."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thresher.analysis.evaluate import TrainerResult, write_run_stats
from thresher.config import Plan
from thresher.rundir import write_run_json


@dataclass
class RunOutcome:
    results: list[TrainerResult]
    harvest: dict[str, Any]
    log: dict[str, Any]
    stream_stats: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def finalize(run_dir: Path, plan: Plan, executor: str, outcome: RunOutcome,
             wall_seconds: float) -> Path:
    """Write the Parquet statistics and the final run.json."""
    start = time.perf_counter()
    write_run_stats(run_dir, outcome.results)
    outcome.timings.update({
        "wall": wall_seconds,
        "harvest": float(outcome.harvest.get("seconds", 0.0)),
        "train_steps": max((r.loop.get("step_seconds", 0.0) for r in outcome.results),
                           default=0.0),
        "write_stats": time.perf_counter() - start,
    })
    stream_stats = {k: v for k, v in outcome.stream_stats.items() if k != "center"}
    write_run_json(run_dir, plan, executor, status="complete", extra={
        "harvest": outcome.harvest,
        "log": outcome.log,
        "stream_stats": stream_stats,
        "trainers": {r.trainer_id: {**r.loop, "seconds": r.seconds} for r in outcome.results},
        "timings": outcome.timings,
    })
    return run_dir
