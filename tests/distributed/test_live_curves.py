"""Curves while the run goes: trainers' points reach the driver as their windows close, go to
wandb at once and into stats/curves.parquet, so a run that dies keeps them and its resume
completes them; the progress line shows each trainer's latest FVE and L0."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

import thresher
from tests.cli_runs import THRESHER, record
from tests.run_configs import smoke_config
from tests.stored_data import long_config
from tests.wandb_files import history_and_summary
from thresher.analysis.curves import CurveLog
from thresher.analysis.parquet import CURVES_SCHEMA
from thresher.analysis.wandb_log import WandbLogger
from thresher.progress import curve_summaries


def point(sae_id: str, step: int, fve: float, trainer_id: str = "t0") -> dict[str, Any]:
    """A curve point of CURVES_SCHEMA: every measure NaN but FVE and L0."""
    row: dict[str, Any] = {name: float("nan") for name in CURVES_SCHEMA.names}
    row.update(trainer_id=trainer_id, sae_id=sae_id, step=step, rows_seen=step * 256,
               window_steps=4, window_rows=512, fve=fve, l0=8.0)
    return row


def test_a_redone_step_replaces_its_point_and_wandb_gets_steps_in_order(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    logger = WandbLogger({"a": {}}, mode="offline", project="t", group="g", directory=tmp_path)
    curves = CurveLog(tmp_path / "curves.parquet", logger, save_every=3600)
    curves.add([point("a", 4, 0.1), point("a", 8, 0.2)])
    # A restarted trainer redoes steps 5-8 and goes on: step 8 again, then 12.
    curves.add([point("a", 8, 0.25), point("a", 12, 0.3)])
    assert [(p["step"], p["fve"]) for p in curves.rows()] == [(4, 0.1), (8, 0.25), (12, 0.3)]
    assert curves.newest["a"]["step"] == 12
    logger.finish()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    _, history, _ = history_and_summary(run)
    assert [(h["_step"], h["fve"]) for h in history] == [(4, 0.1), (8, 0.2), (12, 0.3)]


def test_curves_are_saved_at_most_every_interval_and_read_back_by_a_resume(
        tmp_path: Path) -> None:
    path = tmp_path / "curves.parquet"
    curves = CurveLog(path, save_every=3600)
    curves.add([point("a", 4, 0.1)])  # the first save is due at once
    curves.add([point("a", 8, 0.2)])  # within the interval: kept, not yet written
    assert pq.read_table(path).column("step").to_pylist() == [4]
    curves.save(force=True)
    again = CurveLog(path)
    assert [(p["step"], p["fve"]) for p in again.rows()] == [(4, 0.1), (8, 0.2)]


def test_the_progress_line_shows_each_trainers_fve_and_l0_range() -> None:
    latest = {"a": point("a", 8, 0.712), "b": {**point("b", 8, 0.84), "l0": 31.6},
              "c": {**point("c", 4, float("nan"), trainer_id="t1"), "l0": float("nan"),
                    "train_l0": 5.0}}
    assert curve_summaries(latest) == {"t0": "fve 0.71-0.84 L0 8-32", "t1": "L0 5"}


@pytest.mark.slow
def test_an_interrupted_run_keeps_its_curves_and_wandb_had_them_before_it_ended(
        tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    config = long_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["train"]["curve_every"] = 4
    cfg["run"]["wandb"] = {"mode": "offline", "project": "thresher-test"}
    config.write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "runs" / "long"
    proc = subprocess.Popen([THRESHER, "run", str(config), "--inline", "--no-progress",
                             "--no-report"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    curves_file = run_dir / "stats" / "curves.parquet"
    deadline = time.monotonic() + 180
    while not (curves_file.is_file()
               and len(list(run_dir.glob("saes/*/checkpoint/state.json"))) == 2):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no curves file appeared while the run went"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    stopped_at = record(run_dir)["checkpointed_step"]
    kept = pq.read_table(curves_file).to_pylist()
    assert kept and all(p["step"] % 4 == 0 for p in kept)
    # The offline wandb runs got the points while the run went (it never reached its end).
    for run in (run_dir / "wandb" / "wandb").glob("offline-run-*"):
        _, history, _ = history_and_summary(run)
        assert history and all(h["_step"] % 4 == 0 for h in history)

    resumed = subprocess.run([THRESHER, "run", "--resume", str(run_dir), "--inline",
                              "--no-progress", "--no-report"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    # The store runs out before train.rows: the SAEs' steps are what the summary says.
    (steps_total,) = set(pq.read_table(run_dir / "stats" / "summary.parquet")
                         .column("steps").to_pylist())
    by_sae: dict[str, list[int]] = {}
    for p in pq.read_table(curves_file).to_pylist():
        by_sae.setdefault(p["sae_id"], []).append(p["step"])
    assert len(by_sae) == 2
    for steps in by_sae.values():  # every window once, those before the stop included
        assert steps == list(range(4, steps_total + 1, 4))
    assert stopped_at < steps_total and steps_total % 4 == 0


@pytest.mark.slow
def test_ray_trainers_forward_their_points_while_the_run_goes(ray_session: Any,
                                                              tmp_path: Path) -> None:
    from thresher.distributed.pipeline import run_ray
    from thresher.rundir import create_run_dir

    plan = thresher.plan(smoke_config(tmp_path, train={"curve_every": 8}))
    run_dir = create_run_dir(plan, "ray")
    curves = CurveLog(run_dir / "stats" / "curves.parquet")
    outcome = run_ray(plan, run_dir, curves, progress_enabled=False)
    # Before the results' own rows are merged in (finalize): what came through the stream
    # actor. A trainer returns only once its points are with the stream actor, and the driver
    # takes a stream's last points before it stops its actors, so every point whose window
    # closed while the trainers stepped is here. 32 steps, a point every 8: all of them.
    live = {(p["sae_id"], p["step"]) for p in curves.rows()}
    final = {(p["sae_id"], p["step"]) for r in outcome.results for p in r.curve_rows}
    assert final == {(s.sae_id, step) for s in plan.streams[0].saes for step in (8, 16, 24, 32)}
    assert live == final
