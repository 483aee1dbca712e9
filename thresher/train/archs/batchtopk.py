"""BatchTopK (Bussmann et al. 2024).

Training: the k * B largest positive entries of the batch's pre (k active latents per row on
average). Inference: f = pre * 1[pre > theta], theta an EMA (rate train.batchtopk.threshold_ema)
of the smallest entry kept in training. Exported as a JumpReLU SAE with that threshold, as
SAELens saves its own (BatchTopKTrainingSAE.process_state_dict_for_saving_inference).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch

from thresher.config import SAEConfig, TrainConfig
from thresher.config.archs.batchtopk import BatchTopKSettings
from thresher.train.archs.base import SubBank, threshold_encode
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

    def export_weights(self, sub: SubBank) -> dict[str, torch.Tensor]:
        # The threshold in use: 0 before any step, never negative; one value per SAE, written
        # as a vector [d_sae] as SAELens saves its own.
        theta = torch.nan_to_num(self.threshold, nan=0.0).clamp(min=0.0)
        return {**super().export_weights(sub),
                "threshold": theta.unsqueeze(1).expand(sub.n, sub.d_sae)}

    @classmethod
    def encode(cls, x: torch.Tensor, weights: Mapping[str, torch.Tensor],
               saes: Sequence[SAEConfig]) -> torch.Tensor:
        return threshold_encode(x, weights)
