"""ReLU SAE, Anthropic's April 2024 recipe: f = ReLU(pre), loss mse + l1_coef * ramp * sum_j
f_j ||W_dec[j]||, the decoder free (rows not kept unit norm, initialised at norm 0.1), the
coefficient ramping up over train.relu.coef_warmup of training. Optional resampling of dead
latents every train.relu.resample_every steps (Bricken et al. 2023).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch

from thresher.config import SAEConfig, TrainConfig
from thresher.config.archs.relu import ReLUSettings
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

# A resampled encoder column gets this share of the mean alive encoder norm.
RESAMPLE_ENCODER_SCALE = 0.2


def resample_uniforms(seed: int, step: int, d_sae: int) -> torch.Tensor:
    """The uniforms [d_sae] (float64) that pick the inputs of an SAE's resampling at `step`: a
    function of (seed, step) alone. (Python's hash() of a tuple with a str is salted per process,
    so it must not seed this.)"""
    digest = hashlib.blake2b(f"thresher-resample:{seed}:{step}".encode(), digest_size=8).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
    return torch.rand(d_sae, generator=generator, dtype=torch.float64)


class ReLU(Architecture):
    name: ClassVar[str] = "relu"
    saelens_architecture: ClassVar[str] = "standard"
    unit_norm_decoder = False
    decoder_init_norm: ClassVar[float] = 0.1
    settings: ReLUSettings

    def __init__(self, members: Sequence[SAEConfig], d_sae: int, train: TrainConfig,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(members, d_sae, train, device, dtype)
        self.l1_coef = per_sae(members, "l1_coef", dtype, device)  # [n]
        self.resample_every = self.settings.resample_every
        self.dead_window = train.dead_window

    def train_pass(self, sub: SubBank, inputs: StepInputs) -> TrainingPass:
        pre = sub.pre(inputs.x_s)
        f = pre.relu()
        decoder_norms = sub.p["W_dec"].norm(dim=-1)  # [n, d_sae]
        ramp = coef_ramp(inputs, self.settings.coef_warmup)
        penalty = self.l1_coef * ramp * (f * decoder_norms.unsqueeze(1)).sum(-1).mean(-1)
        return dense_pass(sub, inputs, f, penalty)

    @classmethod
    def encode(cls, x: torch.Tensor, weights: Mapping[str, torch.Tensor],
               saes: Sequence[SAEConfig]) -> torch.Tensor:
        return affine_pre(x, weights["W_enc"], weights["b_enc"], weights["b_dec"]).relu()

    def after_step(self, sub: SubBank, inputs: StepInputs, out: TrainingPass) -> None:
        if self.resample_every > 0 and (inputs.step + 1) % self.resample_every == 0:
            row_loss = (out.x_hat - inputs.target).pow(2).sum(-1).detach()
            self._resample(sub, inputs.x_s, row_loss, inputs.step)

    @torch.no_grad()
    def _resample(self, sub: SubBank, x_s: torch.Tensor, row_loss: torch.Tensor,
                  t: int) -> None:
        """Each dead latent restarts on a batch row drawn with probability proportional to that
        row's squared loss."""
        dead = sub.rows_since_fired >= self.dead_window  # [n, d_sae]
        if not bool(dead.any()):
            return
        # One uniform per latent from each SAE's own seed and the step, so the draw depends
        # neither on the bank the SAE sits in nor on the process (a resumed run draws the same).
        uniforms = torch.stack([resample_uniforms(sae.seed, t, sub.d_sae)
                                for sae in sub.members]).to(sub.device)
        weights = row_loss.double().pow(2)
        cdf = weights.cumsum(-1)
        cdf = cdf / cdf[:, -1:].clamp_min(torch.finfo(torch.float64).tiny)
        drawn = torch.searchsorted(cdf, uniforms).clamp(max=len(x_s) - 1)  # [n, d_sae]
        inputs = x_s[drawn]  # [n, d_sae, d_in]
        direction = inputs / inputs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        alive = (~dead).to(sub.dtype)
        alive_count = alive.sum(-1, keepdim=True).clamp(min=1)
        w_dec, w_enc = sub.p["W_dec"], sub.p["W_enc"]
        dec_norm = (w_dec.norm(dim=-1) * alive).sum(-1, keepdim=True) / alive_count
        enc_norm = (w_enc.norm(dim=1) * alive).sum(-1, keepdim=True) / alive_count
        mask = dead.unsqueeze(-1)
        w_dec.copy_(torch.where(mask, direction * dec_norm.unsqueeze(-1), w_dec))
        new_enc = direction * (RESAMPLE_ENCODER_SCALE * enc_norm).unsqueeze(-1)
        w_enc.copy_(torch.where(mask.transpose(1, 2), new_enc.transpose(1, 2), w_enc))
        sub.p["b_enc"].masked_fill_(dead, 0.0)
        names = sub.param_names
        for moments in (sub.optim.exp_avg, sub.optim.exp_avg_sq):
            moments[names.index("W_dec")].masked_fill_(mask, 0.0)
            moments[names.index("W_enc")].masked_fill_(mask.transpose(1, 2), 0.0)
            moments[names.index("b_enc")].masked_fill_(dead, 0.0)
        sub.rows_since_fired.masked_fill_(dead, 0)
