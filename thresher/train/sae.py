"""SAEBank: many SAEs stepped together on one batch, their parameters stacked.

SAEs are grouped into sub-banks by (arch, d_sae). A sub-bank holds its SAEs' parameters stacked
along a first dimension n (W_enc [n, d_in, d_sae], b_enc [n, d_sae], W_dec [n, d_sae, d_in],
b_dec [n, d_in], and log_threshold [n, d_sae] for jumprelu) and their hyperparameters as tensors
(lr, k, l1, l0, mono_coef), so one step is a handful of batched ops whatever the number of SAEs.
The parameters of different SAEs never interact: the loss is the sum of per-SAE losses, gradient
clipping and Adam act on each SAE's own slice, selection (TopK, BatchTopK, dead latents) is per
SAE, so an SAE trained in a bank ends where it would alone.

Every SAE of a stream trains on x * scale, with the stream's one scale (E||x * scale|| = sqrt(d_in),
Anthropic April 2024); `encode_decode` takes and returns raw activations. pre = (x - b_dec) W_enc
+ b_enc throughout; mse = mean over rows of ||x - x_hat||^2.

Architectures (formulas: ../shared/reference/sae-methods.md):
  topk        f = ReLU(TopK_k(pre)); loss mse + aux_k_coef * AuxK.
  batchtopk   training: the k * B largest positive entries of the batch's pre (k on average per
              row); inference: f = pre * 1[pre > theta], theta an EMA of the smallest kept value.
  matryoshka  batchtopk, plus the mse of every nested prefix of latents (train.matryoshka_fractions)
              reconstructing alone.
  jumprelu    f = pre * H(pre - theta), theta = exp(log_threshold) learned through the
              straight-through estimator with a rectangle kernel of width train.jumprelu_bandwidth;
              loss mse + l0 * sum_j H(pre_j - theta_j).
  relu        f = ReLU(pre); loss mse + l1 * sum_j f_j ||W_dec[j]|| (April 2024), decoder free;
              optional Anthropic resampling of dead latents (train.resample_every).
The L1 / L0 coefficient ramps up linearly over train.l1_warmup of training. Every arch but relu
keeps decoder rows unit norm: the gradient component parallel to each row is removed before the
step and the rows are renormalised after. AuxK (TopK family): the aux_k largest pre-activations of
dead latents (no firing over train.dead_window rows) reconstruct the detached residual, weighted
by min(dead / aux_k, 1) as in SAELens. MonoLoss: mono_coef * (1 - mean batch MonoScore) on any
arch (thresher.train.mono). TopK-family SAEs decode sparsely (thresher.train.sparse) unless
train.sparse_decode is off.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from thresher.config import ARCHITECTURES, TOPK_FAMILY, SAEConfig, TrainConfig
from thresher.stream.stats import StreamStats
from thresher.train.mono import mono_loss, unit_rows
from thresher.train.optim import BankAdam, lr_multiplier
from thresher.train.sparse import dense_decode, sparse_decode, sparse_encode_gather

PARAM_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")
# Adam moments are stored under these prefixes in an SAE's state (see SAEBank.get_sae_state).
MOMENT_PREFIXES = ("adam_m.", "adam_v.")
# Initial decoder row norm: 0.1 for the April-2024 ReLU recipe, unit rows (kept unit) otherwise.
DECODER_INIT_NORM = {"relu": 0.1}
UNIT_NORM_DECODER = frozenset(ARCHITECTURES) - {"relu"}
# torch.nn.utils.clip_grad_norm_'s guard against a zero norm; kept so clipping matches it.
CLIP_EPS = 1e-6
METRIC_NAMES = ("loss", "mse", "l0", "grad_norm", "aux_loss", "mono_score", "dead_fraction")
# Anthropic resampling: a resampled encoder column gets this share of the mean alive norm.
RESAMPLE_ENCODER_SCALE = 0.2


def param_names(arch: str) -> tuple[str, ...]:
    return PARAM_NAMES + (("log_threshold",) if arch == "jumprelu" else ())


def buffer_names(arch: str) -> tuple[str, ...]:
    """Per-SAE training state beside parameters and moments, saved in checkpoints."""
    extra = ("batchtopk_threshold",) if arch in ("batchtopk", "matryoshka") else ()
    return ("tokens_since_fired", *extra)


def init_sae_params(sae: SAEConfig, stats: StreamStats,
                    train: TrainConfig | None = None) -> dict[str, torch.Tensor]:
    """An SAE's initial parameters in float64 on the CPU, from its own seed only.

    Decoder rows are Gaussian directions normalised to DECODER_INIT_NORM (1 by default);
    W_enc = W_dec^T; b_enc = 0; b_dec = the stream's centre in training units; jumprelu
    thresholds start at train.jumprelu_init_threshold. Drawing in float64 on the CPU makes an
    SAE's init independent of its bank, the device and the dtype.
    """
    train = train or TrainConfig()
    generator = torch.Generator().manual_seed(sae.seed)
    w_dec = torch.randn(sae.d_sae, stats.d_in, generator=generator, dtype=torch.float64)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True) * DECODER_INIT_NORM.get(sae.arch, 1.0)
    center = torch.from_numpy(np.asarray(stats.center, dtype=np.float64))
    params = {
        "W_enc": w_dec.T.contiguous(),
        "b_enc": torch.zeros(sae.d_sae, dtype=torch.float64),
        "W_dec": w_dec,
        "b_dec": center * float(stats.scale),
    }
    if sae.arch == "jumprelu":
        params["log_threshold"] = torch.full((sae.d_sae,),
                                             math.log(train.jumprelu_init_threshold),
                                             dtype=torch.float64)
    return params


# --------------------------------------------------------------------------------------------
# JumpReLU straight-through estimators (Rajamanoharan et al. 2024)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# The bank
# --------------------------------------------------------------------------------------------


@dataclass
class _SubBank:
    """SAEs of one (arch, d_sae), their parameters stacked along dim 0."""

    arch: str
    d_sae: int
    positions: list[int]  # each SAE's index in bank order
    sae_ids: list[str]
    p: dict[str, torch.Tensor]  # parameters by name (param_names(arch)), [n, ...]
    lr: torch.Tensor  # [n] float64
    k: torch.Tensor  # [n] int64 (TopK family)
    l1: torch.Tensor  # [n] (relu)
    l0: torch.Tensor  # [n] (jumprelu)
    mono_coef: torch.Tensor  # [n]
    k_max: int
    k_mask: torch.Tensor  # [n, k_max]: 1 where rank < k_i (topk)
    widths: tuple[int, ...]  # matryoshka prefix widths, the last one d_sae
    tokens_since_fired: torch.Tensor  # [n, d_sae] int64
    threshold: torch.Tensor  # [n] float64: batchtopk inference threshold (nan before step 1)
    optim: BankAdam
    # The sparse path's pre-activations [n, B, d_sae], reused step to step on the CPU, where a
    # fresh buffer this large costs page faults on every step.
    pre_buffer: torch.Tensor | None = None

    @property
    def params(self) -> list[torch.Tensor]:
        return [self.p[name] for name in param_names(self.arch)]

    @property
    def buffers(self) -> dict[str, torch.Tensor]:
        return {"tokens_since_fired": self.tokens_since_fired,
                "batchtopk_threshold": self.threshold}


class SAEBank:
    """Trains `saes` together on one activation stream.

    `step(x)` takes one optimisation step of every SAE on the raw batch x [B, d_in] and returns
    per-SAE metrics in bank order (the order of `saes`): loss, mse (mean over rows of
    ||x*scale - x_hat||^2, in training units), l0 (mean active latents per row), grad_norm (each
    SAE's gradient norm before clipping), aux_loss (AuxK with its min(dead / aux_k, 1) weight,
    before train.aux_k_coef; 0 outside the TopK family or without dead latents), mono_score (mean
    batch MonoScore; nan where mono_coef = 0) and dead_fraction (latents silent for
    train.dead_window rows).

    Parameters live on `device` in `dtype`; the encoder and dense-decoder matmuls run under bf16
    autocast when train.bf16 is set on CUDA (`autocast` forces it on or off on any device).
    """

    def __init__(self, saes: Sequence[SAEConfig], stats: StreamStats, train: TrainConfig,
                 total_steps: int, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, autocast: bool | None = None) -> None:
        if not saes:
            raise ValueError("an SAE bank needs at least one SAE")
        ids = [sae.sae_id for sae in saes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"SAE ids must be unique in a bank, got {ids}")
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        _check_train(train)
        for sae in saes:
            if sae.arch not in ARCHITECTURES:
                raise ValueError(f"SAE {sae.sae_id!r}: unknown arch {sae.arch!r}; "
                                 f"known: {', '.join(ARCHITECTURES)}")
            if sae.d_sae <= 0:
                raise ValueError(f"SAE {sae.sae_id!r}: d_sae must be positive, got {sae.d_sae}")
            if sae.arch in TOPK_FAMILY and not 0 < sae.k <= sae.d_sae:
                raise ValueError(f"SAE {sae.sae_id!r}: k must be in [1, d_sae={sae.d_sae}], "
                                 f"got {sae.k}")
        self.saes = list(saes)
        self.stats = stats
        self.train = train
        self.total_steps = total_steps
        self.device = torch.device(device)
        self.dtype = dtype
        self.d_in = int(stats.d_in)
        self.scale = float(stats.scale)
        # bf16 autocast of the encoder and dense-decoder matmuls: train.bf16 on CUDA. `autocast`
        # overrides it, so the same path can be checked on a CPU (where bf16 is rarely faster).
        self.autocast = (bool(train.bf16 and self.device.type == "cuda") if autocast is None
                         else autocast)
        self._steps_taken = 0

        groups: dict[tuple[str, int], list[int]] = {}
        for i, sae in enumerate(self.saes):
            groups.setdefault((sae.arch, sae.d_sae), []).append(i)
        self._subs = [self._build_sub_bank(arch, d_sae, positions)
                      for (arch, d_sae), positions in groups.items()]
        self._where = {self.saes[pos].sae_id: (sub, j)
                       for sub in self._subs for j, pos in enumerate(sub.positions)}

    def _build_sub_bank(self, arch: str, d_sae: int, positions: list[int]) -> _SubBank:
        members = [self.saes[i] for i in positions]
        inits = [init_sae_params(sae, self.stats, self.train) for sae in members]
        stacked = {name: torch.stack([init[name] for init in inits])
                   .to(device=self.device, dtype=self.dtype).requires_grad_(True)
                   for name in param_names(arch)}

        def per_sae(field: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([getattr(sae, field) for sae in members], dtype=dtype,
                                device=self.device)

        k = per_sae("k", torch.int64)
        k_max = int(k.max()) if arch in TOPK_FAMILY else 0
        k_mask = (torch.arange(k_max, device=self.device)[None, :] < k[:, None]).to(self.dtype)
        widths = (matryoshka_widths(d_sae, self.train.matryoshka_fractions)
                  if arch == "matryoshka" else (d_sae,))
        lr = per_sae("lr", torch.float64)
        return _SubBank(
            arch=arch, d_sae=d_sae, positions=positions, sae_ids=[s.sae_id for s in members],
            p=stacked, lr=lr, k=k, l1=per_sae("l1", self.dtype), l0=per_sae("l0", self.dtype),
            mono_coef=per_sae("mono_coef", self.dtype), k_max=k_max, k_mask=k_mask,
            widths=widths,
            tokens_since_fired=torch.zeros(len(members), d_sae, dtype=torch.int64,
                                           device=self.device),
            threshold=torch.full((len(members),), float("nan"), dtype=torch.float64,
                                 device=self.device),
            optim=BankAdam([stacked[name] for name in param_names(arch)], lr))

    # -- identity and step count ---------------------------------------------------------------

    @property
    def sae_ids(self) -> list[str]:
        return [sae.sae_id for sae in self.saes]

    @property
    def steps_taken(self) -> int:
        """Optimisation steps taken so far (Adam's bias correction and the schedules use it)."""
        return self._steps_taken

    @steps_taken.setter
    def steps_taken(self, value: int) -> None:
        self._steps_taken = int(value)
        for sub in self._subs:
            sub.optim.steps = int(value)

    # -- forward -----------------------------------------------------------------------------

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"expected activations [rows, {self.d_in}], got {tuple(x.shape)}")
        return x.to(device=self.device, dtype=self.dtype) * self.scale

    def _matmul_context(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _pre(self, sub: _SubBank, x_s: torch.Tensor, reuse_buffer: bool = False) -> torch.Tensor:
        """pre-activations [n, B, d_sae] = (x - b_dec) W_enc + b_enc (autograd as the caller);
        `reuse_buffer` writes them into the sub-bank's buffer (no autograd, valid until the next
        call)."""
        centred = x_s.unsqueeze(0) - sub.p["b_dec"].unsqueeze(1)
        if reuse_buffer and self.device.type == "cpu" and not self.autocast:
            shape = (len(sub.positions), len(x_s), sub.d_sae)
            if sub.pre_buffer is None or sub.pre_buffer.shape != shape:
                sub.pre_buffer = torch.empty(shape, dtype=self.dtype, device=self.device)
            return torch.baddbmm(sub.p["b_enc"].unsqueeze(1), centred, sub.p["W_enc"],
                                 out=sub.pre_buffer)
        with self._matmul_context():
            pre = torch.baddbmm(sub.p["b_enc"].unsqueeze(1), centred, sub.p["W_enc"])
        return pre.to(self.dtype)

    def _dense_decode(self, sub: _SubBank, f: torch.Tensor) -> torch.Tensor:
        with self._matmul_context():
            x_hat = torch.baddbmm(sub.p["b_dec"].unsqueeze(1), f, sub.p["W_dec"])
        return x_hat.to(self.dtype)

    @torch.no_grad()
    def encode_decode(self, x_raw: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per SAE in bank order: (f [B, d_sae], x_hat [B, d_in] in raw units), inference mode
        (batchtopk and matryoshka apply their threshold)."""
        x_s = self._scaled(x_raw)
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.saes)
        for sub in self._subs:
            f = self._inference_latents(sub, self._pre(sub, x_s))
            x_hat = self._dense_decode(sub, f) / self.scale
            for j, pos in enumerate(sub.positions):
                out[pos] = (f[j], x_hat[j])
        return [pair for pair in out if pair is not None]

    def _inference_latents(self, sub: _SubBank, pre: torch.Tensor) -> torch.Tensor:
        if sub.arch == "topk":
            values, indices = pre.topk(sub.k_max, dim=-1, sorted=True)
            values = values.relu() * sub.k_mask.unsqueeze(1)
            return torch.zeros_like(pre).scatter(-1, indices, values)
        if sub.arch in ("batchtopk", "matryoshka"):
            theta = torch.nan_to_num(sub.threshold, nan=0.0).clamp(min=0.0).to(pre.dtype)
            return pre * (pre > theta.view(-1, 1, 1)).to(pre.dtype)
        if sub.arch == "jumprelu":
            theta = sub.p["log_threshold"].exp().unsqueeze(1)
            return pre * (pre > theta).to(pre.dtype)
        return pre.relu()

    # -- training ----------------------------------------------------------------------------

    def sparsity_ramp(self, step: int) -> float:
        """Share of each relu L1 / jumprelu L0 coefficient in force at 0-based step `step`."""
        warmup = self.train.l1_warmup * self.total_steps
        return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0

    l1_ramp = sparsity_ramp  # the walking skeleton's name

    def step(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """One optimisation step of every SAE on the raw batch x [B, d_in]."""
        if len(x) == 0:
            raise ValueError("cannot step on an empty batch")
        x_s = self._scaled(x)
        t = self._steps_taken
        lr_scale = lr_multiplier(t, self.total_steps, self.train.warmup_steps,
                                 self.train.decay_start)
        ramp = self.sparsity_ramp(t)
        metrics = np.zeros((len(METRIC_NAMES), len(self.saes)), dtype=np.float64)
        for sub in self._subs:
            values = self._step_sub_bank(sub, x_s, lr_scale, ramp, t)
            metrics[:, sub.positions] = values.cpu().numpy()
        self.steps_taken = t + 1
        return {name: metrics[i] for i, name in enumerate(METRIC_NAMES)}

    def _select_topk(self, sub: _SubBank,
                     pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices [n, B, K], active [n, B, K]) of the TopK family's chosen entries."""
        if sub.arch == "topk":
            _, indices = pre.topk(sub.k_max, dim=-1, sorted=True)
            return indices, sub.k_mask.unsqueeze(1).expand_as(indices).bool()
        # BatchTopK: the k_i * B largest positive entries of each SAE's [B, d_sae] block.
        n, rows, d_sae = pre.shape
        flat = pre.relu().flatten(1)
        values, chosen = flat.topk(sub.k_max * rows, dim=-1, sorted=True)
        keep = ((torch.arange(sub.k_max * rows, device=pre.device)[None, :]
                 < (sub.k * rows)[:, None]) & (values > 0))
        selected = torch.zeros_like(flat, dtype=torch.bool).scatter(1, chosen, keep)
        selected = selected.view(n, rows, d_sae)
        # Per-row padded form for the sparse decoder: each row's selections, padded to the
        # bank's busiest row with inactive entries.
        width = max(1, int(selected.sum(-1).max()))
        ranked = torch.where(selected, pre, torch.tensor(-math.inf, dtype=pre.dtype,
                                                         device=pre.device))
        scores, indices = ranked.topk(width, dim=-1, sorted=True)
        self._update_threshold(sub, pre, selected)
        return indices, torch.isfinite(scores)

    @torch.no_grad()
    def _update_threshold(self, sub: _SubBank, pre: torch.Tensor, selected: torch.Tensor) -> None:
        """EMA of each SAE's smallest kept activation (BatchTopK's inference threshold)."""
        smallest = torch.where(selected, pre, math.inf).amin(dim=(1, 2)).to(torch.float64)
        seen = torch.isfinite(smallest)
        rate = self.train.threshold_ema
        updated = torch.where(torch.isnan(sub.threshold), smallest,
                              sub.threshold + rate * (smallest - sub.threshold))
        sub.threshold.copy_(torch.where(seen, updated, sub.threshold))

    def _decode_selected(self, sub: _SubBank, values: torch.Tensor,
                         indices: torch.Tensor) -> torch.Tensor:
        decode = sparse_decode if self.train.sparse_decode else dense_decode
        return decode(values, indices, sub.p["W_dec"])

    def _step_sub_bank(self, sub: _SubBank, x_s: torch.Tensor, lr_scale: float,
                       ramp: float, t: int) -> torch.Tensor:
        n, rows = len(sub.positions), len(x_s)
        target = x_s.unsqueeze(0)
        zero = torch.zeros(n, dtype=self.dtype, device=self.device)
        aux, penalty = zero, zero
        dead = sub.tokens_since_fired >= self.train.dead_window  # [n, d_sae]
        if sub.arch in TOPK_FAMILY:
            sparse = self.train.sparse_decode
            with torch.set_grad_enabled(not sparse):
                pre = self._pre(sub, x_s, reuse_buffer=sparse)
            with torch.no_grad():
                indices, active = self._select_topk(sub, pre.detach())
                aux_indices, aux_active, aux_scale = self._select_aux(sub, pre.detach(), dead)
            all_indices = (indices if aux_indices is None
                           else torch.cat([indices, aux_indices], dim=-1))
            if sparse:
                gathered = sparse_encode_gather(pre, x_s, sub.p["W_enc"], sub.p["b_enc"],
                                                sub.p["b_dec"], all_indices)
            else:
                gathered = pre.gather(-1, all_indices)
            main = gathered[..., :indices.shape[-1]]
            values = main.relu() * active.to(main.dtype)
            x_hat = self._decode_selected(sub, values, indices) + sub.p["b_dec"].unsqueeze(1)
            mse = (x_hat - target).pow(2).sum(-1).mean(-1)
            for width in sub.widths[:-1]:  # matryoshka: each prefix reconstructs alone
                inner = values * (indices < width).to(values.dtype)
                inner_hat = (self._decode_selected(sub, inner, indices)
                             + sub.p["b_dec"].unsqueeze(1))
                penalty = penalty + (inner_hat - target).pow(2).sum(-1).mean(-1)
            if aux_indices is not None:
                aux_values = gathered[..., indices.shape[-1]:] * aux_active.to(gathered.dtype)
                residual = (target - x_hat).detach()
                aux_hat = self._decode_selected(sub, aux_values, aux_indices)
                aux = aux_scale * (aux_hat - residual).pow(2).sum(-1).mean(-1)
            with torch.no_grad():
                fired_counts = torch.zeros(n, sub.d_sae, dtype=torch.int64, device=self.device)
                fired_counts.scatter_add_(1, indices.flatten(1),
                                          (values > 0).flatten(1).to(torch.int64))
                fired = fired_counts > 0
                l0 = (values > 0).sum(-1).to(torch.float64).mean(-1)
            f_dense = None
            if bool((sub.mono_coef > 0).any()):
                f_dense = torch.zeros(n, rows, sub.d_sae, dtype=values.dtype,
                                      device=self.device).scatter(-1, indices, values)
        else:
            pre = self._pre(sub, x_s)
            if sub.arch == "jumprelu":
                theta = sub.p["log_threshold"].exp().unsqueeze(1)  # [n, 1, d_sae]
                bandwidth = self.train.jumprelu_bandwidth
                f_dense = jumprelu(pre, theta, bandwidth)
                l0_soft = step_function(pre, theta, bandwidth).sum(-1).mean(-1)
                penalty = sub.l0 * ramp * l0_soft
            else:
                f_dense = pre.relu()
                decoder_norms = sub.p["W_dec"].norm(dim=-1)  # [n, d_sae]
                penalty = sub.l1 * ramp * (f_dense * decoder_norms.unsqueeze(1)).sum(-1).mean(-1)
            x_hat = self._dense_decode(sub, f_dense)
            mse = (x_hat - target).pow(2).sum(-1).mean(-1)
            with torch.no_grad():
                fired = (f_dense > 0).any(dim=1)
                l0 = (f_dense > 0).sum(-1).to(torch.float64).mean(-1)
        loss = mse + penalty + self.train.aux_k_coef * aux
        mono_score = torch.full((n,), math.nan, dtype=torch.float64, device=self.device)
        if f_dense is not None and bool((sub.mono_coef > 0).any()):
            mono = mono_loss(f_dense, unit_rows(x_s))
            loss = loss + sub.mono_coef * mono
            mono_score = torch.where(sub.mono_coef > 0, 1.0 - mono.detach().double(), mono_score)

        # Parameters of different SAEs are disjoint, so the gradient of the sum is each SAE's own.
        grads = list(torch.autograd.grad(loss.sum(), sub.params))
        with torch.no_grad():
            unit_rows_decoder = sub.arch in UNIT_NORM_DECODER
            if unit_rows_decoder:
                # g -= (g . w) w / ||w||^2: the component along each decoder row, in place.
                w_dec = sub.p["W_dec"]
                along = (torch.einsum("nmd,nmd->nm", grads[2], w_dec)
                         / w_dec.norm(dim=-1).pow(2)).unsqueeze(-1)
                grads[2].addcmul_(w_dec, along, value=-1.0)
            grad_norm = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1)
                                     for g in grads]).norm(dim=0)
            if self.train.grad_clip > 0:
                coef = (self.train.grad_clip / (grad_norm + CLIP_EPS)).clamp(max=1.0)
                for g in grads:
                    g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))
            sub.optim.step(grads, lr_scale)
            if unit_rows_decoder:
                sub.p["W_dec"].div_(sub.p["W_dec"].norm(dim=-1, keepdim=True))
            sub.tokens_since_fired.add_(rows).masked_fill_(fired, 0)
            if (sub.arch == "relu" and self.train.resample_every > 0
                    and (t + 1) % self.train.resample_every == 0):
                self._resample(sub, x_s, (x_hat - target).pow(2).sum(-1).detach(), t)
            dead_fraction = (sub.tokens_since_fired >= self.train.dead_window).double().mean(-1)
            return torch.stack([loss.detach().double(), mse.detach().double(), l0,
                                grad_norm.double(), aux.detach().double(), mono_score,
                                dead_fraction])

    def _select_aux(self, sub: _SubBank, pre: torch.Tensor, dead: torch.Tensor
                    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """AuxK's (indices, active, per-SAE weight), or None indices when no latent is dead."""
        k_aux = self.train.aux_k or self.d_in // 2
        n_dead = dead.sum(-1)
        if self.train.aux_k_coef == 0 or not bool(n_dead.any()):
            return None, dead, n_dead.to(self.dtype)
        ranked = torch.where(dead.unsqueeze(1), pre,
                             torch.tensor(-math.inf, dtype=pre.dtype, device=pre.device))
        scores, indices = ranked.topk(min(k_aux, sub.d_sae), dim=-1, sorted=True)
        weight = (n_dead.to(self.dtype) / k_aux).clamp(max=1.0)
        return indices, torch.isfinite(scores), weight

    @torch.no_grad()
    def _resample(self, sub: _SubBank, x_s: torch.Tensor, row_loss: torch.Tensor,
                  t: int) -> None:
        """Anthropic resampling: each dead latent restarts on a batch row drawn with
        probability proportional to that row's squared loss (Bricken et al. 2023)."""
        dead = sub.tokens_since_fired >= self.train.dead_window  # [n, d_sae]
        if not bool(dead.any()):
            return
        # One uniform per latent from each SAE's own seed and the step, so the draw depends
        # neither on the bank the SAE sits in nor on the process (a resumed run draws the same).
        members = [self.saes[pos] for pos in sub.positions]
        uniforms = torch.stack([resample_uniforms(sae.seed, t, sub.d_sae)
                                for sae in members]).to(self.device)
        weights = row_loss.double().pow(2)
        cdf = weights.cumsum(-1)
        cdf = cdf / cdf[:, -1:].clamp_min(torch.finfo(torch.float64).tiny)
        drawn = torch.searchsorted(cdf, uniforms).clamp(max=len(x_s) - 1)  # [n, d_sae]
        inputs = x_s[drawn]  # [n, d_sae, d_in]
        direction = inputs / inputs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        alive = (~dead).to(self.dtype)
        alive_count = alive.sum(-1, keepdim=True).clamp(min=1)
        w_dec, w_enc = sub.p["W_dec"], sub.p["W_enc"]
        dec_norm = (w_dec.norm(dim=-1) * alive).sum(-1, keepdim=True) / alive_count
        enc_norm = (w_enc.norm(dim=1) * alive).sum(-1, keepdim=True) / alive_count
        mask = dead.unsqueeze(-1)
        w_dec.copy_(torch.where(mask, direction * dec_norm.unsqueeze(-1), w_dec))
        new_enc = direction * (RESAMPLE_ENCODER_SCALE * enc_norm).unsqueeze(-1)
        w_enc.copy_(torch.where(mask.transpose(1, 2), new_enc.transpose(1, 2), w_enc))
        sub.p["b_enc"].masked_fill_(dead, 0.0)
        names = param_names(sub.arch)
        for moments in (sub.optim.exp_avg, sub.optim.exp_avg_sq):
            moments[names.index("W_dec")].masked_fill_(mask, 0.0)
            moments[names.index("W_enc")].masked_fill_(mask.transpose(1, 2), 0.0)
            moments[names.index("b_enc")].masked_fill_(dead, 0.0)
        sub.tokens_since_fired.masked_fill_(dead, 0)

    # -- per-SAE access (checkpoints, export, statistics) --------------------------------------

    def _locate(self, sae_id: str) -> tuple[_SubBank, int]:
        try:
            return self._where[sae_id]
        except KeyError:
            raise KeyError(f"no SAE {sae_id!r} in this bank; it holds {self.sae_ids}") from None

    def sae_params(self, sae_id: str) -> dict[str, torch.Tensor]:
        """One SAE's parameters in training units, as CPU copies (W_enc is [d_in, d_sae])."""
        sub, j = self._locate(sae_id)
        return {name: sub.p[name][j].detach().cpu().clone() for name in param_names(sub.arch)}

    def inference_params(self, sae_id: str) -> dict[str, torch.Tensor]:
        """The four SAE matrices plus, for threshold archs, `threshold` [d_sae] (training units):
        f = pre * 1[pre > threshold] (jumprelu, and batchtopk / matryoshka at inference)."""
        sub, j = self._locate(sae_id)
        params = {name: sub.p[name][j].detach().cpu().clone() for name in PARAM_NAMES}
        if sub.arch == "jumprelu":
            params["threshold"] = sub.p["log_threshold"][j].detach().exp().cpu()
        elif sub.arch in ("batchtopk", "matryoshka"):
            theta = float(torch.nan_to_num(sub.threshold[j], nan=0.0).clamp(min=0.0))
            params["threshold"] = torch.full((sub.d_sae,), theta, dtype=torch.float64)
        return params

    def get_sae_state(self, sae_id: str) -> dict[str, torch.Tensor]:
        """One SAE's parameters, Adam moments and buffers (CPU copies), keyed for a checkpoint."""
        sub, j = self._locate(sae_id)
        state = self.sae_params(sae_id)
        names = param_names(sub.arch)
        for prefix, moments in zip(MOMENT_PREFIXES, (sub.optim.exp_avg, sub.optim.exp_avg_sq),
                                   strict=True):
            for name, moment in zip(names, moments, strict=True):
                state[prefix + name] = moment[j].detach().cpu().clone()
        for name in buffer_names(sub.arch):
            state[name] = sub.buffers[name][j:j + 1].detach().cpu().clone().reshape(
                sub.buffers[name].shape[1:] or (1,))
        return state

    @torch.no_grad()
    def set_sae_state(self, sae_id: str, state: Mapping[str, torch.Tensor]) -> None:
        """Overwrite one SAE's parameters, Adam moments and buffers (the step count is the
        bank's)."""
        sub, j = self._locate(sae_id)
        names = param_names(sub.arch)
        targets: dict[str, torch.Tensor] = {name: sub.p[name] for name in names}
        for prefix, moments in zip(MOMENT_PREFIXES, (sub.optim.exp_avg, sub.optim.exp_avg_sq),
                                   strict=True):
            targets.update({prefix + name: m for name, m in zip(names, moments, strict=True)})
        targets.update({name: sub.buffers[name] for name in buffer_names(sub.arch)})
        missing = sorted(set(targets) - set(state))
        if missing:
            raise KeyError(f"state for SAE {sae_id!r} lacks {missing}")
        for key, target in targets.items():
            value = state[key]
            expected = tuple(target.shape[1:]) or (1,)
            if tuple(value.shape) != expected:
                raise ValueError(f"SAE {sae_id!r}: {key} has shape {tuple(value.shape)}, "
                                 f"expected {expected}")
            target[j].copy_(value.reshape(target.shape[1:]).to(device=self.device,
                                                               dtype=target.dtype))

    @torch.no_grad()
    def decoder_norms(self) -> dict[str, np.ndarray]:
        """Each SAE's decoder row norms [d_sae], in training units."""
        norms: dict[str, np.ndarray] = {}
        for sub in self._subs:
            values = sub.p["W_dec"].norm(dim=-1).double().cpu().numpy()
            norms.update({sae_id: values[j] for j, sae_id in enumerate(sub.sae_ids)})
        return {sae_id: norms[sae_id] for sae_id in self.sae_ids}


def resample_uniforms(seed: int, step: int, d_sae: int) -> torch.Tensor:
    """The uniforms [d_sae] (float64) that pick the inputs of an SAE's resampling at `step`: a
    function of (seed, step) alone. (Python's hash() of a tuple with a str is salted per process,
    so it must not seed this.)"""
    digest = hashlib.blake2b(f"thresher-resample:{seed}:{step}".encode(), digest_size=8).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
    return torch.rand(d_sae, generator=generator, dtype=torch.float64)


def matryoshka_widths(d_sae: int, fractions: Sequence[float]) -> tuple[int, ...]:
    """Nested prefix widths: round(f * d_sae) for each fraction, then d_sae itself."""
    widths = sorted({max(1, round(f * d_sae)) for f in fractions} - {d_sae})
    return (*widths, d_sae)


def _check_train(train: TrainConfig) -> None:
    problems = []
    if train.dead_window <= 0:
        problems.append(f"train.dead_window must be positive, got {train.dead_window}")
    if train.aux_k < 0 or train.aux_k_coef < 0:
        problems.append("train.aux_k and train.aux_k_coef must be >= 0")
    if not 0 < train.threshold_ema <= 1:
        problems.append(f"train.threshold_ema must be in (0, 1], got {train.threshold_ema}")
    if train.jumprelu_bandwidth <= 0 or train.jumprelu_init_threshold <= 0:
        problems.append("train.jumprelu_bandwidth and train.jumprelu_init_threshold must be "
                        "positive")
    if any(not 0 < f < 1 for f in train.matryoshka_fractions):
        problems.append(f"train.matryoshka_fractions must lie in (0, 1), got "
                        f"{list(train.matryoshka_fractions)}")
    if train.resample_every < 0:
        problems.append(f"train.resample_every must be >= 0, got {train.resample_every}")
    if problems:
        raise ValueError("; ".join(problems))
