"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse
Autoencoders", eqs. 5-10).

pi_gate = (x - b_dec) W_enc + b_gate and pi_mag = (x - b_dec) (W_enc * exp(r_mag)) + b_mag, the
magnitude path sharing the gate's encoder up to a per-latent scale; f = 1[pi_gate > 0] *
ReLU(pi_mag). Loss: mse + l1_coef * ramp * sum_j ReLU(pi_gate)_j, the coefficient ramping up
over train.gated.coef_warmup of training, plus the auxiliary loss ||x - x_hat_frozen||^2 of the
gate's activations ReLU(pi_gate) decoded through a frozen (gradient-stopped) copy of W_dec and
b_dec, which trains the gate, whose step function passes no gradient. Decoder rows are held at
unit norm, as in the paper. b_gate is the bank's b_enc; b_mag and r_mag start at 0.

Exported as SAELens's `gated` SAE: W_enc, W_dec, b_dec, b_gate, b_mag, r_mag (no b_enc).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch

from thresher.config import SAEConfig, TrainConfig
from thresher.config.archs.gated import GatedSettings
from thresher.train.archs.base import (
    Architecture,
    StepInputs,
    SubBank,
    TrainingPass,
    affine_pre,
    coef_ramp,
    dense_pass,
    per_sae,
)


class Gated(Architecture):
    name: ClassVar[str] = "gated"
    saelens_architecture: ClassVar[str] = "gated"
    extra_param_names: ClassVar[tuple[str, ...]] = ("b_mag", "r_mag")  # [n, d_sae] each
    settings: GatedSettings

    def __init__(self, members: Sequence[SAEConfig], d_sae: int, train: TrainConfig,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(members, d_sae, train, device, dtype)
        self.l1_coef = per_sae(members, "l1_coef", dtype, device)  # [n]

    @classmethod
    def init_extra_params(cls, sae: SAEConfig, train: TrainConfig) -> dict[str, torch.Tensor]:
        return {name: torch.zeros(sae.d_sae, dtype=torch.float64) for name in ("b_mag", "r_mag")}

    def train_pass(self, sub: SubBank, inputs: StepInputs) -> TrainingPass:
        p = sub.p
        pi_gate = sub.pre(inputs.x_s)  # b_enc is b_gate
        # (x - b_dec) W_enc exp(r_mag) + b_mag, from the gate's product without a second matmul
        pi_mag = ((pi_gate - p["b_enc"].unsqueeze(1)) * p["r_mag"].exp().unsqueeze(1)
                  + p["b_mag"].unsqueeze(1))
        f = (pi_gate > 0).to(pi_gate.dtype) * pi_mag.relu()
        gate = pi_gate.relu()
        ramp = coef_ramp(inputs, self.settings.coef_warmup)
        penalty = self.l1_coef * ramp * gate.sum(-1).mean(-1)
        out = dense_pass(sub, inputs, f, penalty)
        with sub.matmul_context():
            via_gate = torch.baddbmm(p["b_dec"].detach().unsqueeze(1), gate,
                                     p["W_dec"].detach())
        aux = (via_gate.to(sub.dtype) - inputs.target).pow(2).sum(-1).mean(-1)
        return dataclasses.replace(out, aux=aux, aux_coef=1.0)

    def export_weights(self, sub: SubBank) -> dict[str, torch.Tensor]:
        p = sub.p
        return {"W_enc": p["W_enc"], "W_dec": p["W_dec"], "b_dec": p["b_dec"],
                "b_gate": p["b_enc"], "b_mag": p["b_mag"], "r_mag": p["r_mag"]}

    @classmethod
    def encode(cls, x: torch.Tensor, weights: Mapping[str, torch.Tensor],
               saes: Sequence[SAEConfig]) -> torch.Tensor:
        w_enc, b_dec = weights["W_enc"], weights["b_dec"]
        pi_gate = affine_pre(x, w_enc, weights["b_gate"], b_dec)
        w_mag = w_enc * weights["r_mag"].exp().unsqueeze(1)
        pi_mag = affine_pre(x, w_mag, weights["b_mag"], b_dec)
        return (pi_gate > 0).to(pi_gate.dtype) * pi_mag.relu()
