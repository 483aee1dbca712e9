"""JumpReLU (Rajamanoharan et al. 2024): f = pre * H(pre - theta), theta = exp(log_threshold).

theta is learned through straight-through estimators with a rectangle kernel of width
train.jumprelu.bandwidth; the loss is mse + l0_coef * ramp * sum_j H(pre_j - theta_j), the
coefficient ramping up over train.jumprelu.coef_warmup of training. Thresholds start at
train.jumprelu.init_threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from thresher.config import SAEConfig, TrainConfig
from thresher.config.archs.jumprelu import JumpReLUSettings
from thresher.train.archs.base import (
    Architecture,
    StepInputs,
    SubBank,
    TrainingPass,
    coef_ramp,
    dense_pass,
    per_sae,
    threshold_encode,
)


def _rectangle(pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """K((pre - theta) / bandwidth) with K the rectangle 1[-1/2 < u < 1/2]."""
    return ((pre - theta).abs() < bandwidth / 2).to(pre.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        pre, theta = ctx.saved_tensors
        grad_pre = grad * (pre > theta).to(grad.dtype)
        grad_theta = (-(theta / ctx.bandwidth) * _rectangle(pre, theta, ctx.bandwidth)
                      * grad).sum_to_size(theta.shape)
        return grad_pre, grad_theta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        pre, theta = ctx.saved_tensors
        grad_theta = (-(1.0 / ctx.bandwidth) * _rectangle(pre, theta, ctx.bandwidth)
                      * grad).sum_to_size(theta.shape)
        return None, grad_theta, None


def jumprelu(pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """pre * H(pre - theta); d/dtheta = -(theta / eps) K((pre - theta) / eps) (STE)."""
    return _JumpReLU.apply(pre, theta, bandwidth)


def step_function(pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """H(pre - theta); d/dtheta = -(1 / eps) K((pre - theta) / eps), no gradient to pre (STE)."""
    return _Step.apply(pre, theta, bandwidth)


class JumpReLU(Architecture):
    name: ClassVar[str] = "jumprelu"
    saelens_architecture: ClassVar[str] = "jumprelu"
    extra_param_names: ClassVar[tuple[str, ...]] = ("log_threshold",)  # [n, d_sae]
    settings: JumpReLUSettings

    def __init__(self, members: Sequence[SAEConfig], d_sae: int, train: TrainConfig,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(members, d_sae, train, device, dtype)
        self.l0_coef = per_sae(members, "l0_coef", dtype, device)  # [n]
        self.bandwidth = self.settings.bandwidth

    @classmethod
    def init_extra_params(cls, sae: SAEConfig, train: TrainConfig) -> dict[str, torch.Tensor]:
        settings = train.arch_settings(cls.name)
        assert isinstance(settings, JumpReLUSettings)
        return {"log_threshold": torch.full((sae.d_sae,), math.log(settings.init_threshold),
                                            dtype=torch.float64)}

    @staticmethod
    def _theta(sub: SubBank) -> torch.Tensor:
        return sub.p["log_threshold"].exp().unsqueeze(1)  # [n, 1, d_sae]

    def train_pass(self, sub: SubBank, inputs: StepInputs) -> TrainingPass:
        pre = sub.pre(inputs.x_s)
        theta = self._theta(sub)
        f = jumprelu(pre, theta, self.bandwidth)
        l0_soft = step_function(pre, theta, self.bandwidth).sum(-1).mean(-1)
        penalty = self.l0_coef * coef_ramp(inputs, self.settings.coef_warmup) * l0_soft
        return dense_pass(sub, inputs, f, penalty)

    def export_weights(self, sub: SubBank) -> dict[str, torch.Tensor]:
        return {**super().export_weights(sub), "threshold": sub.p["log_threshold"].exp()}

    @classmethod
    def encode(cls, x: torch.Tensor, weights: Mapping[str, torch.Tensor],
               saes: Sequence[SAEConfig]) -> torch.Tensor:
        return threshold_encode(x, weights)
