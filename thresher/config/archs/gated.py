"""gated (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse
Autoencoders"): a gate picks the latents that fire, a magnitude path sharing the gate's encoder
sets their values; the L1 penalty falls on the gate alone."""

from __future__ import annotations

from dataclasses import dataclass

from thresher.config.arch_spec import ArchSpec, Problems
from thresher.config.archs.relu import L1_COEF


@dataclass(frozen=True)
class GatedSettings:
    # Fraction of training over which l1_coef ramps up from 0.
    coef_warmup: float = 0.05

    def problems(self) -> Problems:
        if self.coef_warmup < 0:
            return [("coef_warmup", f"must be >= 0, got {self.coef_warmup}")]
        return []


# relu's six dense matmuls, plus the gate's reconstruction through the frozen decoder (forward
# and the backward to the gate).
SPEC = ArchSpec("gated", GatedSettings, sweep_keys=(L1_COEF,), step_cost=8.0)
