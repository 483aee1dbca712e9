"""Matryoshka (Bussmann et al. 2025; Nabeshima 2024): BatchTopK, plus the mse of every nested
prefix of latents (train.matryoshka.fractions of d_sae) reconstructing alone. Its decoder rows
are free by default (train.matryoshka.unit_norm_decoder), as sae_lens trains it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from thresher.config import SAEConfig, TrainConfig
from thresher.config.archs.matryoshka import MatryoshkaSettings
from thresher.train.archs.base import SubBank
from thresher.train.archs.batchtopk import BatchTopK


def matryoshka_widths(d_sae: int, fractions: Sequence[float]) -> tuple[int, ...]:
    """Nested prefix widths: round(f * d_sae) for each fraction, then d_sae itself."""
    widths = sorted({max(1, round(f * d_sae)) for f in fractions} - {d_sae})
    return (*widths, d_sae)


class Matryoshka(BatchTopK):
    name: ClassVar[str] = "matryoshka"
    saelens_architecture: ClassVar[str] = "jumprelu"
    settings: MatryoshkaSettings

    def __init__(self, members: Sequence[SAEConfig], d_sae: int, train: TrainConfig,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(members, d_sae, train, device, dtype)
        self.widths = matryoshka_widths(d_sae, self.settings.fractions)
        self.unit_norm_decoder = self.settings.unit_norm_decoder

    def prefix_penalty(self, sub: SubBank, values: torch.Tensor, indices: torch.Tensor,
                       target: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        penalty = zero
        for width in self.widths[:-1]:  # each prefix reconstructs alone
            inner = values * (indices < width).to(values.dtype)
            inner_hat = (self.decode_selected(sub, inner, indices)
                         + sub.p["b_dec"].unsqueeze(1))
            penalty = penalty + (inner_hat - target).pow(2).sum(-1).mean(-1)
        return penalty
