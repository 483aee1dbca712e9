"""relu (Anthropic, April 2024): f = ReLU(pre), L1 penalty weighted by decoder norms."""

from __future__ import annotations

from dataclasses import dataclass

from thresher.config.arch_spec import ArchSpec, Problems, SweepKey

L1_COEF = SweepKey("l1_coef", float, 5.0, minimum="non-negative")  # the L1 penalty's weight


@dataclass(frozen=True)
class ReLUSettings:
    # Fraction of training over which l1_coef ramps up from 0.
    coef_warmup: float = 0.05
    # Anthropic resampling of dead latents every this many steps (0: off).
    resample_every: int = 0

    def problems(self) -> Problems:
        wrong = []
        if self.coef_warmup < 0:
            wrong.append(("coef_warmup", f"must be >= 0, got {self.coef_warmup}"))
        if self.resample_every < 0:
            wrong.append(("resample_every", f"must be >= 0, got {self.resample_every}"))
        return wrong


# Six dense matmuls: encoder and decoder, forward and two backward each.
SPEC = ArchSpec("relu", ReLUSettings, sweep_keys=(L1_COEF,), step_cost=6.0)
