"""jumprelu (Rajamanoharan et al. 2024): f = pre * H(pre - theta), theta learned through a
straight-through estimator, an L0 penalty."""

from __future__ import annotations

from dataclasses import dataclass

from thresher.config.arch_spec import ArchSpec, Problems, SweepKey

L0_COEF = SweepKey("l0_coef", float, 0.5, minimum="non-negative")  # the L0 penalty's weight


@dataclass(frozen=True)
class JumpReLUSettings:
    # The straight-through estimator's rectangle-kernel width (training units).
    bandwidth: float = 0.05
    init_threshold: float = 0.01
    # Fraction of training over which l0_coef ramps up from 0.
    coef_warmup: float = 0.05

    def problems(self) -> Problems:
        wrong = [(name, "must be positive") for name in ("bandwidth", "init_threshold")
                 if getattr(self, name) <= 0]
        if self.coef_warmup < 0:
            wrong.append(("coef_warmup", f"must be >= 0, got {self.coef_warmup}"))
        return wrong


# Six dense matmuls, as relu.
SPEC = ArchSpec("jumprelu", JumpReLUSettings, sweep_keys=(L0_COEF,), step_cost=6.0)
