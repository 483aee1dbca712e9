"""The torch half of an SAE architecture (`Architecture`), and the sub-bank it acts on.

An architecture `<name>` is thresher/config/archs/<name>.py (its `ArchSpec`: settings, sweep
keys, step cost; torch-free, what config reads) and thresher/train/archs/<name>.py, which holds
the `Architecture` subclass whose `name` is `<name>` (thresher.train.archs.registry finds it
by that module name). The subclass is its training rule (`train_pass`, `after_step`), its
export (`export_weights`, `saelens_architecture`, `saelens_fields`) and its inference rule
(`encode`), which the bank's evaluation and the exported SAE (thresher.analysis.frozen) both
call, on the bank's parameters and on the export's raw-unit weights.

A sub-bank holds the SAEs of one (arch, d_sae) with their parameters stacked along a first
dimension n (W_enc [n, d_in, d_sae], b_enc [n, d_sae], W_dec [n, d_sae, d_in], b_dec [n, d_in],
then the architecture's own parameters). The bank (thresher.train.bank) owns what every
architecture shares: stacking, the optimiser, decoder-row projection, clipping, the schedule,
dead-latent counters and checkpoint state. An `Architecture` owns the rest: its extra
parameters and buffers and their init, its training latents with their penalty and auxiliary
loss, its inference rule, its export and its SAELens name. One instance serves one sub-bank
and holds that sub-bank's per-SAE hyperparameters as tensors.

pre = (x - b_dec) W_enc + b_enc throughout; mse = mean over rows of ||x - x_hat||^2.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from thresher.config import ArchSettings, SAEConfig, TrainConfig
from thresher.train.optim import BankAdam

PARAM_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")


def per_sae(members: Sequence[SAEConfig], key: str, dtype: torch.dtype,
            device: torch.device | None = None) -> torch.Tensor:
    """One sweep key's value of every member as a tensor [n]."""
    return torch.tensor([sae.value(key) for sae in members], dtype=dtype, device=device)


def affine_pre(x: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor,
               b_dec: torch.Tensor) -> torch.Tensor:
    """(x - b_dec) W_enc + b_enc for n SAEs at once: x [B, d_in], W_enc [n, d_in, d_sae], b_enc
    [n, d_sae], b_dec [n, d_in] -> [n, B, d_sae]."""
    centred = x.unsqueeze(0).to(w_enc.dtype) - b_dec.unsqueeze(1)
    return torch.baddbmm(b_enc.unsqueeze(1), centred, w_enc)


@dataclass
class StepInputs:
    """What one training step hands every sub-bank."""

    x_s: torch.Tensor  # [B, d_in], training units
    target: torch.Tensor  # [1, B, d_in]: x_s broadcast over the sub-bank
    dead: torch.Tensor  # [n, d_sae] bool: latents silent for train.dead_window rows
    need_dense: bool  # the dense latents [n, B, d_sae] are wanted (MonoLoss)
    step: int  # 0-based index of this step
    total_steps: int


def coef_ramp(inputs: StepInputs, warmup: float) -> float:
    """Share of a penalty coefficient in force at this step: a linear ramp over the first
    `warmup` fraction of training."""
    steps = warmup * inputs.total_steps
    return min(1.0, (inputs.step + 1) / steps) if steps > 0 else 1.0


@dataclass
class TrainingPass:
    """An architecture's forward pass in training, per SAE [n] unless said otherwise."""

    x_hat: torch.Tensor  # [n, B, d_in]
    mse: torch.Tensor
    penalty: torch.Tensor  # added to the loss as it is (sparsity penalty, nested losses)
    aux: torch.Tensor  # the auxiliary loss reported as aux_loss, weighted by aux_coef
    aux_coef: float
    fired: torch.Tensor  # [n, d_sae] bool: latents active on some row of the batch
    l0: torch.Tensor  # float64: mean active latents per row
    dense: torch.Tensor | None  # [n, B, d_sae] latents when StepInputs.need_dense

    @property
    def loss(self) -> torch.Tensor:
        return self.mse + self.penalty + self.aux_coef * self.aux


@dataclass
class SubBank:
    """SAEs of one (arch, d_sae), their parameters stacked along dim 0."""

    arch: Architecture
    d_sae: int
    positions: list[int]  # each SAE's index in bank order
    members: list[SAEConfig]
    p: dict[str, torch.Tensor]  # parameters by name (`param_names`), [n, ...]
    lr: torch.Tensor  # [n] float64
    mono_coef: torch.Tensor  # [n]
    rows_since_fired: torch.Tensor  # [n, d_sae] int64: training rows since it fired
    optim: BankAdam
    device: torch.device
    dtype: torch.dtype
    autocast: bool  # bf16 autocast of the encoder and dense-decoder matmuls
    # The sparse path's pre-activations [n, B, d_sae], reused step to step on the CPU, where a
    # fresh buffer this large costs page faults on every step.
    pre_buffer: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return len(self.positions)

    @property
    def d_in(self) -> int:
        return int(self.p["b_dec"].shape[-1])

    @property
    def sae_ids(self) -> list[str]:
        return [sae.sae_id for sae in self.members]

    @property
    def param_names(self) -> tuple[str, ...]:
        return PARAM_NAMES + self.arch.extra_param_names

    @property
    def params(self) -> list[torch.Tensor]:
        return [self.p[name] for name in self.param_names]

    @property
    def buffers(self) -> dict[str, torch.Tensor]:
        """Per-SAE training state beside parameters and moments, saved in checkpoints."""
        return {"rows_since_fired": self.rows_since_fired, **self.arch.buffers}

    def matmul_context(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def pre(self, x_s: torch.Tensor, reuse_buffer: bool = False) -> torch.Tensor:
        """pre-activations [n, B, d_sae] = (x - b_dec) W_enc + b_enc (autograd as the caller);
        `reuse_buffer` writes them into the sub-bank's buffer (no autograd, valid until the next
        call)."""
        centred = x_s.unsqueeze(0) - self.p["b_dec"].unsqueeze(1)
        if reuse_buffer and self.device.type == "cpu" and not self.autocast:
            shape = (self.n, len(x_s), self.d_sae)
            if self.pre_buffer is None or self.pre_buffer.shape != shape:
                self.pre_buffer = torch.empty(shape, dtype=self.dtype, device=self.device)
            return torch.baddbmm(self.p["b_enc"].unsqueeze(1), centred, self.p["W_enc"],
                                 out=self.pre_buffer)
        with self.matmul_context():
            pre = torch.baddbmm(self.p["b_enc"].unsqueeze(1), centred, self.p["W_enc"])
        return pre.to(self.dtype)

    def dense_decode(self, f: torch.Tensor) -> torch.Tensor:
        with self.matmul_context():
            x_hat = torch.baddbmm(self.p["b_dec"].unsqueeze(1), f, self.p["W_dec"])
        return x_hat.to(self.dtype)


def dense_pass(sub: SubBank, inputs: StepInputs, f: torch.Tensor,
               penalty: torch.Tensor) -> TrainingPass:
    """The rest of a pass whose latents `f` are dense (ReLU, JumpReLU): decode, MSE, the
    latents that fired and L0; no auxiliary loss."""
    x_hat = sub.dense_decode(f)
    mse = (x_hat - inputs.target).pow(2).sum(-1).mean(-1)
    with torch.no_grad():
        fired = (f > 0).any(dim=1)
        l0 = (f > 0).sum(-1).to(torch.float64).mean(-1)
    zero = torch.zeros(sub.n, dtype=sub.dtype, device=sub.device)
    return TrainingPass(x_hat=x_hat, mse=mse, penalty=penalty, aux=zero, aux_coef=0.0,
                        fired=fired, l0=l0, dense=f)



class Architecture(ABC):
    """One SAE architecture, acting on the sub-bank of its SAEs of one width.

    Subclasses set `name` (the config's `arch`, also their module's name) and
    `saelens_architecture`; their settings are `train.<name>`, the dataclass their spec
    (thresher/config/archs/<name>.py) declares.
    """

    name: ClassVar[str]
    saelens_architecture: ClassVar[str]  # cfg.json's `architecture` of the export
    extra_param_names: ClassVar[tuple[str, ...]] = ()  # trained beside PARAM_NAMES
    # Decoder rows kept unit norm (gradient projected, rows renormalised after each step); an
    # architecture may take it from its settings.
    unit_norm_decoder: bool = True
    decoder_init_norm: ClassVar[float] = 1.0  # initial decoder row norm

    def __init__(self, members: Sequence[SAEConfig], d_sae: int, train: TrainConfig,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.d_sae = d_sae
        self.train = train
        self.settings: ArchSettings = train.arch_settings(self.name)  # train.<name>

    @classmethod
    def problems(cls, sae: SAEConfig) -> list[str]:
        """What is wrong with an SAE's hyperparameters for this architecture."""
        return []

    @classmethod
    def init_extra_params(cls, sae: SAEConfig, train: TrainConfig) -> dict[str, torch.Tensor]:
        """The initial `extra_param_names` of one SAE, float64 on the CPU."""
        return {}

    @property
    def buffers(self) -> dict[str, torch.Tensor]:
        """The architecture's own per-SAE state [n, ...], saved in checkpoints by name."""
        return {}

    @abstractmethod
    def train_pass(self, sub: SubBank, inputs: StepInputs) -> TrainingPass:
        """The training forward pass of every SAE of `sub` on one batch."""

    def after_step(  # noqa: B027 (a hook most architectures leave empty)
            self, sub: SubBank, inputs: StepInputs, out: TrainingPass) -> None:
        """Run without autograd after the optimiser step and the dead-latent counters."""

    def export_weights(self, sub: SubBank) -> dict[str, torch.Tensor]:
        """The tensors the export writes, by their SAELens names, of every SAE of `sub` [n, ...]
        in training units: the four matrices and what `encode` needs beside them. Folding the
        input scale into the export changes W_enc, W_dec and b_dec only; every other tensor
        acts on the pre-activations, which it leaves as they are."""
        return {name: sub.p[name] for name in PARAM_NAMES}

    @classmethod
    @abstractmethod
    def encode(cls, x: torch.Tensor, weights: Mapping[str, torch.Tensor],
               saes: Sequence[SAEConfig]) -> torch.Tensor:
        """The inference rule: latents [n, B, d_sae] of the rows x [B, d_in] under n SAEs'
        `export_weights` [n, ...] (the bank's, in training units, or an export's, in raw
        units) and their configs (for keys such as k)."""

    @classmethod
    def saelens_fields(cls, sae: SAEConfig) -> dict[str, Any]:
        """cfg.json fields of the export that only this architecture has."""
        return {}


def threshold_encode(x: torch.Tensor, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """f = pre * 1[pre > threshold], threshold [n, d_sae]: SAELens's JumpReLU at inference."""
    pre = affine_pre(x, weights["W_enc"], weights["b_enc"], weights["b_dec"])
    threshold = weights["threshold"].to(pre.dtype).unsqueeze(1)
    return pre * (pre > threshold).to(pre.dtype)
