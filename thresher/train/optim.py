"""Adam over a bank's stacked parameters, and the learning-rate schedule.

`BankAdam` is Adam (with bias correction, no weight decay) over parameters whose first dimension
indexes the SAEs of a bank, with one learning rate per SAE. Each SAE's slice follows exactly the
arithmetic of `torch.optim.Adam` (single-tensor path), so an SAE trained in a bank is the SAE
trained alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, decay_start: float) -> float:
    """The schedule's factor on every SAE's learning rate for the step with 0-based index `step`.

    Linear warm-up over `warmup_steps` steps (the first step already moves, at 1/warmup_steps),
    then constant, then a linear decay from step `decay_start * total_steps` that would reach 0
    at `total_steps` (so the last step still moves).
    """
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    decay_begin = decay_start * total_steps
    if step < decay_begin or decay_begin >= total_steps:
        decay = 1.0
    else:
        decay = max(0.0, (total_steps - step) / (total_steps - decay_begin))
    return min(warm, decay)


def _per_sae(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[n] values shaped to broadcast over a stacked parameter [n, ...]."""
    return values.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


class BankAdam:
    """Adam over stacked parameters [n, ...] with a per-SAE learning rate `lr` [n].

    `step(grads, lr_scale)` applies one update with learning rates `lr * lr_scale` (the schedule).
    The step count is shared by every SAE of the bank: they always step together.
    """

    def __init__(self, params: Sequence[torch.Tensor], lr: torch.Tensor,
                 betas: tuple[float, float] = ADAM_BETAS, eps: float = ADAM_EPS) -> None:
        if lr.dim() != 1:
            raise ValueError(f"lr must be a vector [n], got shape {tuple(lr.shape)}")
        for p in params:
            if p.shape[0] != lr.shape[0]:
                raise ValueError(f"parameter of shape {tuple(p.shape)} does not stack "
                                 f"{lr.shape[0]} SAEs")
        self.params = list(params)
        # Learning rates stay float64 so lr * schedule / bias correction is computed as
        # torch.optim.Adam computes it, in Python floats.
        self.lr = lr.detach().to(device=self.params[0].device, dtype=torch.float64)
        self.betas = betas
        self.eps = eps
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.contiguous_format)
                        for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.contiguous_format)
                           for p in self.params]
        # One reused buffer per parameter for the update: a fresh parameter-sized temporary
        # every step costs more in page faults than the arithmetic on a CPU.
        self._scratch = [torch.empty_like(p, memory_format=torch.contiguous_format)
                         for p in self.params]
        self.steps = 0

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor], lr_scale: float = 1.0) -> None:
        if len(grads) != len(self.params):
            raise ValueError(f"got {len(grads)} gradients for {len(self.params)} parameters")
        self.steps += 1
        beta1, beta2 = self.betas
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2_sqrt = math.sqrt(1 - beta2**self.steps)
        step_size = (self.lr * lr_scale) / bias_correction1  # [n], float64
        for param, grad, exp_avg, exp_avg_sq, scratch in zip(
                self.params, grads, self.exp_avg, self.exp_avg_sq, self._scratch, strict=True):
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            # denom = sqrt(v) / bias_correction2_sqrt + eps; param -= step_size * m / denom
            denom = torch.sqrt(exp_avg_sq, out=scratch).div_(bias_correction2_sqrt).add_(self.eps)
            update = torch.div(exp_avg, denom, out=scratch)
            param.sub_(update.mul_(_per_sae(step_size, param)))
