"""The TopK family: latents chosen by rank, trained with AuxK, decoded sparsely.

Each member chooses, without autograd, which entries of pre are active (`select`); only those
are gathered with gradient, so the dense [n, B, d_sae] latents are never formed in training
(thresher.train.sparse) unless train.<arch>.sparse_decode is off or MonoLoss needs them.

AuxK: the train.<arch>.aux_k largest pre-activations of dead latents (no firing over
train.dead_window rows) reconstruct the detached residual, weighted by min(dead / aux_k, 1) as in
SAELens; the loss adds it times train.<arch>.aux_k_coef. The training loss is mse + penalty
(`prefix_penalty`, 0 but for matryoshka) + aux_k_coef * AuxK.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence

import torch

from thresher.config import SAEConfig, TrainConfig
from thresher.config.archs.topk import TopKSettings
from thresher.train.archs.base import Architecture, StepInputs, SubBank, TrainingPass, per_sae
from thresher.train.sparse import dense_decode, sparse_decode, sparse_encode_gather


class TopKFamily(Architecture):
    settings: TopKSettings

    def __init__(self, members: Sequence[SAEConfig], d_sae: int, train: TrainConfig,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(members, d_sae, train, device, dtype)
        self.k = per_sae(members, "k", torch.int64, device)  # [n]
        self.k_max = int(self.k.max())
        # [n, k_max]: 1 where rank < k_i
        self.k_mask = (torch.arange(self.k_max, device=device)[None, :]
                       < self.k[:, None]).to(dtype)
        self.sparse_decode = self.settings.sparse_decode
        self.aux_k = self.settings.aux_k
        self.aux_k_coef = self.settings.aux_k_coef

    @classmethod
    def problems(cls, sae: SAEConfig) -> list[str]:
        k = sae.value("k")
        if not 0 < k <= sae.d_sae:
            return [f"k must be in [1, d_sae={sae.d_sae}], got {k}"]
        return []

    @abstractmethod
    def select(self, sub: SubBank, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices [n, B, K], active [n, B, K]) of the chosen entries of pre (no autograd)."""

    def prefix_penalty(self, sub: SubBank, values: torch.Tensor, indices: torch.Tensor,
                       target: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """Loss terms beyond mse and AuxK, [n]; none but matryoshka's nested prefixes."""
        return zero

    def decode_selected(self, sub: SubBank, values: torch.Tensor,
                        indices: torch.Tensor) -> torch.Tensor:
        decode = sparse_decode if self.sparse_decode else dense_decode
        return decode(values, indices, sub.p["W_dec"])

    def train_pass(self, sub: SubBank, inputs: StepInputs) -> TrainingPass:
        x_s, target = inputs.x_s, inputs.target
        n, rows = sub.n, len(x_s)
        zero = torch.zeros(n, dtype=sub.dtype, device=sub.device)
        aux = zero
        sparse = self.sparse_decode
        with torch.set_grad_enabled(not sparse):
            pre = sub.pre(x_s, reuse_buffer=sparse)
        with torch.no_grad():
            indices, active = self.select(sub, pre.detach())
            aux_indices, aux_active, aux_scale = self._select_aux(sub, pre.detach(), inputs.dead)
        all_indices = (indices if aux_indices is None
                       else torch.cat([indices, aux_indices], dim=-1))
        if sparse:
            gathered = sparse_encode_gather(pre, x_s, sub.p["W_enc"], sub.p["b_enc"],
                                            sub.p["b_dec"], all_indices)
        else:
            gathered = pre.gather(-1, all_indices)
        main = gathered[..., :indices.shape[-1]]
        values = main.relu() * active.to(main.dtype)
        x_hat = self.decode_selected(sub, values, indices) + sub.p["b_dec"].unsqueeze(1)
        mse = (x_hat - target).pow(2).sum(-1).mean(-1)
        penalty = self.prefix_penalty(sub, values, indices, target, zero)
        if aux_indices is not None:
            aux_values = gathered[..., indices.shape[-1]:] * aux_active.to(gathered.dtype)
            residual = (target - x_hat).detach()
            aux_hat = self.decode_selected(sub, aux_values, aux_indices)
            aux = aux_scale * (aux_hat - residual).pow(2).sum(-1).mean(-1)
        with torch.no_grad():
            fired_counts = torch.zeros(n, sub.d_sae, dtype=torch.int64, device=sub.device)
            fired_counts.scatter_add_(1, indices.flatten(1),
                                      (values > 0).flatten(1).to(torch.int64))
            fired = fired_counts > 0
            l0 = (values > 0).sum(-1).to(torch.float64).mean(-1)
        dense = None
        if inputs.need_dense:
            dense = torch.zeros(n, rows, sub.d_sae, dtype=values.dtype,
                                device=sub.device).scatter(-1, indices, values)
        return TrainingPass(x_hat=x_hat, mse=mse, penalty=penalty, aux=aux,
                            aux_coef=self.aux_k_coef, fired=fired, l0=l0, dense=dense)

    def _select_aux(self, sub: SubBank, pre: torch.Tensor, dead: torch.Tensor
                    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """AuxK's (indices, active, per-SAE weight), or None indices when no latent is dead."""
        k_aux = self.aux_k or sub.d_in // 2
        n_dead = dead.sum(-1)
        if self.aux_k_coef == 0 or not bool(n_dead.any()):
            return None, dead, n_dead.to(sub.dtype)
        ranked = torch.where(dead.unsqueeze(1), pre,
                             torch.tensor(-math.inf, dtype=pre.dtype, device=pre.device))
        scores, indices = ranked.topk(min(k_aux, sub.d_sae), dim=-1, sorted=True)
        weight = (n_dead.to(sub.dtype) / k_aux).clamp(max=1.0)
        return indices, torch.isfinite(scores), weight
