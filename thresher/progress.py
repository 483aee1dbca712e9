"""Driver-side progress: rows harvested and steps per trainer, with ETA (tqdm), and each
trainer's latest curve point: the FVE and L0 range over its SAEs.

Quiet when stderr is not a terminal (CI, `ray job submit` logs), unless forced.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

from tqdm import tqdm

from thresher.config import Plan, train_steps


class Progress:
    @classmethod
    def of_plan(cls, plan: Plan, enabled: bool | None = None) -> Progress:
        """A run's bars: every stream's rows (held-out and training), each trainer's steps."""
        cfg = plan.config
        return cls(len(plan.streams) * (cfg.train.rows + cfg.stream.holdout_rows),
                   dict.fromkeys((t.trainer_id for t in plan.trainers), train_steps(cfg.train)),
                   enabled=enabled)

    def __init__(self, harvest_rows: int, trainer_steps: dict[str, int],
                 enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bars: dict[str, tqdm[Any]] = {}
        if not self.enabled:
            return
        self.bars["harvest"] = tqdm(total=harvest_rows, desc="harvest rows", unit="row",
                                    unit_scale=True, position=0, dynamic_ncols=True)
        for i, (trainer_id, steps) in enumerate(trainer_steps.items(), start=1):
            self.bars[trainer_id] = tqdm(total=steps, desc=f"trainer {trainer_id}", unit="step",
                                         position=i, dynamic_ncols=True)

    def update(self, harvest_rows: int, steps: dict[str, int],
               latest: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """`latest`: the newest curve point of each SAE (CurveLog.latest)."""
        if not self.enabled:
            return
        self._set("harvest", harvest_rows)
        for trainer_id, step in steps.items():
            self._set(trainer_id, step)
        for trainer_id, text in curve_summaries(latest or {}).items():
            bar = self.bars.get(trainer_id)
            if bar is not None and bar.postfix != text:
                bar.set_postfix_str(text)

    def _set(self, name: str, value: int) -> None:
        bar = self.bars.get(name)
        if bar is not None and value != bar.n:
            bar.update(min(value, bar.total or value) - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def curve_summaries(latest: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Per trainer, 'fve 0.71-0.84 L0 8-32' over its SAEs' newest points (the window's
    observed batches; the training batches' L0 where none was observed)."""
    by_trainer: dict[str, list[Mapping[str, Any]]] = {}
    for point in latest.values():
        by_trainer.setdefault(str(point["trainer_id"]), []).append(point)
    summaries = {}
    for trainer_id, points in by_trainer.items():
        parts = []
        for label, names in (("fve", ("fve",)), ("L0", ("l0", "train_l0"))):
            values = [v for p in points if (v := _first_finite(p, names)) is not None]
            if values:
                low, high = min(values), max(values)
                fmt = "{:.2f}" if label == "fve" else "{:.0f}"
                parts.append(f"{label} {fmt.format(low)}" + (
                    "" if fmt.format(low) == fmt.format(high) else f"-{fmt.format(high)}"))
        if parts:
            summaries[trainer_id] = " ".join(parts)
    return summaries


def _first_finite(point: Mapping[str, Any], names: tuple[str, ...]) -> float | None:
    for name in names:
        value = point.get(name)
        if isinstance(value, int | float) and math.isfinite(value):
            return float(value)
    return None
