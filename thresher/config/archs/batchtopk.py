"""batchtopk (Bussmann et al. 2024): the k * B largest entries of the batch in training, a
threshold at inference."""

from __future__ import annotations

from dataclasses import dataclass

from thresher.config.arch_spec import ArchSpec, Problems
from thresher.config.archs.topk import K, TopKSettings


@dataclass(frozen=True)
class BatchTopKSettings(TopKSettings):
    threshold_ema: float = 0.01  # the EMA rate of the inference threshold

    def problems(self) -> Problems:
        wrong = super().problems()
        if not 0 < self.threshold_ema <= 1:
            wrong.append(("threshold_ema", f"must be in (0, 1], got {self.threshold_ema}"))
        return wrong


# The TopK family's sparse path plus the batch-wide selection.
SPEC = ArchSpec("batchtopk", BatchTopKSettings, sweep_keys=(K,), step_cost=2.5)
