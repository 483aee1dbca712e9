"""Weights & Biases logging of training curves and final metrics, one wandb run per SAE.

Off by default (mode "disabled": wandb is not even imported). Each SAE gets its own wandb run
(grouped by the thresher run's name, its hyperparameters as config), so the wandb UI compares
the SAEs of a sweep directly; the curve points of `TrainingCurves` become its history and the
summary.parquet row its summary.

Logging must never take a run down: wandb missing, logged out, offline, or failing half-way
only costs a warning, after which the logger does nothing. Every wandb call goes through
`_guard`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODES = ("disabled", "offline", "online")
# Columns of a curve point or summary row that name the SAE rather than measure it.
IDENTITY_KEYS = frozenset({"run_name", "stream_id", "trainer_id", "sae_id", "arch", "backbone",
                           "model", "hook", "step"})


class WandbLogger:
    """Runs for the SAEs of one trainer, `sae_configs` {sae_id: hyperparameters}. `mode`:
    disabled, offline (files under `directory`/wandb, to upload later with `wandb sync`) or
    online."""

    def __init__(self, sae_configs: Mapping[str, Mapping[str, Any]], *, mode: str = "disabled",
                 project: str = "thresher", entity: str | None = None, group: str = "",
                 directory: str | Path | None = None, init_timeout: float = 60.0) -> None:
        if mode not in MODES:
            raise ValueError(f"wandb mode {mode!r}: use one of {', '.join(MODES)}")
        self.mode = mode
        self.runs: dict[str, Any] = {}
        self.failed = False
        if mode == "disabled" or not sae_configs:
            return
        try:
            import wandb
        except ImportError:
            log.warning("wandb logging is on (mode %s) but wandb is not installed: pip install "
                        "'thresher[wandb]'; going on without it", mode)
            self.failed = True
            return
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
        settings = self._guard("set up", lambda: wandb.Settings(
            silent=True, init_timeout=init_timeout, console="off", save_code=False))
        if settings is None:
            return
        out = None if directory is None else str(directory)
        for sae_id, config in sae_configs.items():
            def start(sae_id: str = sae_id, config: Mapping[str, Any] = config) -> Any:
                return wandb.init(project=project, entity=entity, group=group or None,
                                  name=f"{group}/{sae_id}" if group else sae_id,
                                  config=_plain(config), dir=out, mode=mode,
                                  reinit="create_new", settings=settings)

            run = self._guard(f"start the run of SAE {sae_id}", start)
            if run is None:
                return
            self.runs[sae_id] = run

    @property
    def active(self) -> bool:
        return bool(self.runs) and not self.failed

    def _guard(self, what: str, call: Any) -> Any:
        """Run one wandb call; on any error, warn once, drop every run and return None."""
        if self.failed:
            return None
        try:
            return call()
        except Exception as exc:  # wandb raises its own and network errors; none may escape
            log.warning("wandb: could not %s (%s: %s); logging to wandb is off for the rest of "
                        "this run", what, type(exc).__name__, str(exc)[:300])
            self.failed = True
            self._finish_quietly()
            return None

    def log_points(self, points: Iterable[Mapping[str, Any]]) -> None:
        """Curve points (TrainingCurves rows): each SAE's metrics at its step."""
        if not self.active:
            return
        for point in points:
            run = self.runs.get(str(point["sae_id"]))
            if run is None:
                continue
            values = _metrics(point)
            self._guard(f"log step {point['step']}",
                        lambda run=run, values=values, step=int(point["step"]):
                        run.log(values, step=step))

    def log_final(self, summary_rows: Sequence[Mapping[str, Any]]) -> None:
        """The SAEs' summary.parquet rows as their runs' summaries, under `final/` (the
        held-out, frozen-weights numbers; the curves' last point keeps its own keys)."""
        if not self.active:
            return
        for row in summary_rows:
            run = self.runs.get(str(row["sae_id"]))
            if run is not None:
                values = {f"final/{key}": value for key, value in _metrics(row).items()}
                self._guard("write the final metrics",
                            lambda run=run, values=values: run.summary.update(values))

    def finish(self) -> None:
        if self.active:
            for sae_id, run in list(self.runs.items()):
                self._guard(f"finish the run of SAE {sae_id}", run.finish)
        self.runs = {}

    def _finish_quietly(self) -> None:
        for run in self.runs.values():
            with contextlib.suppress(Exception):  # already failing: nothing more to report
                run.finish(exit_code=1)
        self.runs = {}


def _metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """Finite numbers of a row, identity columns left out (wandb shows NaN as missing anyway)."""
    out = {}
    for key, value in row.items():
        if key in IDENTITY_KEYS or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(float(value)):
            out[key] = float(value) if isinstance(value, float) else int(value)
    return out


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in config.items()}
