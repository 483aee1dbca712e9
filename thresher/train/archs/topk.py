"""TopK (Gao et al. 2024): f = ReLU(TopK_k(pre)) per row, in training and at inference."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from thresher.config import SAEConfig
from thresher.train.archs.base import SubBank
from thresher.train.archs.topk_family import TopKFamily


class TopK(TopKFamily):
    name: ClassVar[str] = "topk"
    saelens_architecture: ClassVar[str] = "topk"

    def select(self, sub: SubBank, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, indices = pre.topk(self.k_max, dim=-1, sorted=True)
        return indices, self.k_mask.unsqueeze(1).expand_as(indices).bool()

    def inference_latents(self, sub: SubBank, pre: torch.Tensor) -> torch.Tensor:
        values, indices = pre.topk(self.k_max, dim=-1, sorted=True)
        values = values.relu() * self.k_mask.unsqueeze(1)
        return torch.zeros_like(pre).scatter(-1, indices, values)

    @classmethod
    def saelens_fields(cls, sae: SAEConfig) -> dict[str, Any]:
        return {"k": int(sae.k), "rescale_acts_by_decoder_norm": False}
