"""TopK (Gao et al. 2024): f = ReLU(TopK_k(pre)) per row, in training and at inference."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from thresher.config import SAEConfig
from thresher.train.archs.base import SubBank, affine_pre, per_sae
from thresher.train.archs.topk_family import TopKFamily


class TopK(TopKFamily):
    name: ClassVar[str] = "topk"
    saelens_architecture: ClassVar[str] = "topk"

    def select(self, sub: SubBank, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, indices = pre.topk(self.k_max, dim=-1, sorted=True)
        return indices, self.k_mask.unsqueeze(1).expand_as(indices).bool()

    @classmethod
    def encode(cls, x: torch.Tensor, weights: Mapping[str, torch.Tensor],
               saes: Sequence[SAEConfig]) -> torch.Tensor:
        pre = affine_pre(x, weights["W_enc"], weights["b_enc"], weights["b_dec"])
        k = per_sae(saes, "k", torch.int64, pre.device)
        values, indices = pre.topk(int(k.max()), dim=-1, sorted=True)
        ranks = torch.arange(values.shape[-1], device=pre.device)
        values = values.relu() * (ranks[None, :] < k[:, None]).to(pre.dtype).unsqueeze(1)
        return torch.zeros_like(pre).scatter(-1, indices, values)

    @classmethod
    def saelens_fields(cls, sae: SAEConfig) -> dict[str, Any]:
        return {"k": int(sae.value("k")), "rescale_acts_by_decoder_norm": False}
