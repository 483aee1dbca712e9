"""BatchTopK (Bussmann et al. 2024).

Training: the k * B largest positive entries of the batch's pre (k active latents per row on
average). Inference: f = pre * 1[pre > theta], theta an EMA (rate train.batchtopk.threshold_ema)
of the smallest entry kept in training. Exported as a JumpReLU SAE with that threshold, as
SAELens saves its own (BatchTopKTrainingSAE.process_state_dict_for_saving_inference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch

from thresher.config import BatchTopKSettings, SAEConfig, TrainConfig
from thresher.train.archs.base import SubBank
from thresher.train.archs.topk_family import TopKFamily


class BatchTopK(TopKFamily):
    name: ClassVar[str] = "batchtopk"
    saelens_architecture: ClassVar[str] = "jumprelu"
    settings: BatchTopKSettings

    def __init__(self, members: Sequence[SAEConfig], d_sae: int, train: TrainConfig,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(members, d_sae, train, device, dtype)
        self.threshold_ema = self.settings.threshold_ema
        # [n] float64: the inference threshold (nan before the first step)
        self.threshold = torch.full((len(members),), float("nan"), dtype=torch.float64,
                                    device=device)

    @property
    def buffers(self) -> dict[str, torch.Tensor]:
        return {"batchtopk_threshold": self.threshold}

    def select(self, sub: SubBank, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The k_i * B largest positive entries of each SAE's [B, d_sae] block.
        n, rows, d_sae = pre.shape
        flat = pre.relu().flatten(1)
        values, chosen = flat.topk(self.k_max * rows, dim=-1, sorted=True)
        keep = ((torch.arange(self.k_max * rows, device=pre.device)[None, :]
                 < (self.k * rows)[:, None]) & (values > 0))
        selected = torch.zeros_like(flat, dtype=torch.bool).scatter(1, chosen, keep)
        selected = selected.view(n, rows, d_sae)
        # Per-row padded form for the sparse decoder: each row's selections, padded to the
        # bank's busiest row with inactive entries.
        width = max(1, int(selected.sum(-1).max()))
        ranked = torch.where(selected, pre, torch.tensor(-math.inf, dtype=pre.dtype,
                                                         device=pre.device))
        scores, indices = ranked.topk(width, dim=-1, sorted=True)
        self._update_threshold(pre, selected)
        return indices, torch.isfinite(scores)

    @torch.no_grad()
    def _update_threshold(self, pre: torch.Tensor, selected: torch.Tensor) -> None:
        """EMA of each SAE's smallest kept activation."""
        smallest = torch.where(selected, pre, math.inf).amin(dim=(1, 2)).to(torch.float64)
        seen = torch.isfinite(smallest)
        rate = self.threshold_ema
        updated = torch.where(torch.isnan(self.threshold), smallest,
                              self.threshold + rate * (smallest - self.threshold))
        self.threshold.copy_(torch.where(seen, updated, self.threshold))

    def _theta(self) -> torch.Tensor:
        """The threshold in use: 0 before any step, never negative."""
        return torch.nan_to_num(self.threshold, nan=0.0).clamp(min=0.0)

    def inference_latents(self, sub: SubBank, pre: torch.Tensor) -> torch.Tensor:
        theta = self._theta().to(pre.dtype)
        return pre * (pre > theta.view(-1, 1, 1)).to(pre.dtype)

    def export(self, sub: SubBank, j: int) -> dict[str, torch.Tensor]:
        theta = float(torch.nan_to_num(self.threshold[j], nan=0.0).clamp(min=0.0))
        return {"threshold": torch.full((sub.d_sae,), theta, dtype=torch.float64)}
