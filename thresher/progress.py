"""Driver-side progress: rows harvested and steps per trainer, with ETA (tqdm).

Quiet when stderr is not a terminal (CI, `ray job submit` logs), unless forced.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


class Progress:
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

    def update(self, harvest_rows: int, steps: dict[str, int]) -> None:
        if not self.enabled:
            return
        self._set("harvest", harvest_rows)
        for trainer_id, step in steps.items():
            self._set(trainer_id, step)

    def _set(self, name: str, value: int) -> None:
        bar = self.bars.get(name)
        if bar is not None and value != bar.n:
            bar.update(min(value, bar.total or value) - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
