"""matryoshka (Bussmann et al. 2025; Nabeshima 2024): batchtopk whose nested prefixes of
latents also reconstruct alone."""

from __future__ import annotations

from dataclasses import dataclass

from thresher.config.arch_spec import ArchSpec, Problems
from thresher.config.archs.batchtopk import BatchTopKSettings
from thresher.config.archs.topk import K


@dataclass(frozen=True)
class MatryoshkaSettings(BatchTopKSettings):
    # The prefixes, as fractions of d_sae (the full width is always the last level).
    fractions: tuple[float, ...] = (0.0625, 0.25)
    # Keep decoder rows at unit norm, as the other TopK-family archs do. Off by default, as
    # sae_lens trains it: with free rows Matryoshka recovers the ground truth of
    # tests/train/test_ground_truth.py as well as sae_lens does (mean MCC 0.895), held at unit
    # norm it loses 0.03 (0.865). On is Bussmann et al.'s reference training.
    unit_norm_decoder: bool = False

    def problems(self) -> Problems:
        wrong = super().problems()
        if any(not 0 < f < 1 for f in self.fractions):
            wrong.append(("fractions", f"must each lie in (0, 1), got {list(self.fractions)}"))
        return wrong


# batchtopk plus one sparse decode per prefix.
SPEC = ArchSpec("matryoshka", MatryoshkaSettings, sweep_keys=(K,), step_cost=3.0)
