"""SAEBank: many SAEs stepped together on one batch, their parameters stacked.

SAEs are grouped into sub-banks by (arch, d_sae). A sub-bank holds its SAEs' parameters stacked
along a first dimension n (W_enc [n, d_in, d_sae], b_enc [n, d_sae], W_dec [n, d_sae, d_in],
b_dec [n, d_in]) and their hyperparameters as tensors (lr, k, l1), so one step is a handful of
batched matmuls whatever the number of SAEs. The parameters of different SAEs never interact:
the loss is the sum of per-SAE losses, gradient clipping and Adam act on each SAE's own slice, so
an SAE trained in a bank ends exactly where it would alone.

Every SAE of a stream trains on x * scale, with the stream's one scale (E||x * scale|| = sqrt(d_in),
Anthropic April 2024); `encode_decode` takes and returns raw activations.

Architectures:
  topk  f = ReLU(TopK_k((x - b_dec) W_enc + b_enc)); loss ||x - x_hat||^2; decoder rows unit norm
        (gradient parallel to each row removed before the step, rows renormalised after).
  relu  f = ReLU((x - b_dec) W_enc + b_enc); loss ||x - x_hat||^2 + lambda(t) sum_j f_j ||W_dec[j]||
        (Anthropic April 2024); lambda ramps up linearly over train.l1_warmup of training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from thresher.config import ARCHITECTURES, SAEConfig, TrainConfig
from thresher.harvest.stream import StreamStats
from thresher.train.optim import BankAdam, lr_multiplier

PARAM_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")
# Adam moments are stored under these prefixes in an SAE's state (see SAEBank.get_sae_state).
MOMENT_PREFIXES = ("adam_m.", "adam_v.")
# Initial decoder row norm: unit rows for TopK (kept unit), 0.1 for the April-2024 ReLU recipe.
DECODER_INIT_NORM = {"topk": 1.0, "relu": 0.1}
# torch.nn.utils.clip_grad_norm_'s guard against a zero norm; kept so clipping matches it.
CLIP_EPS = 1e-6
METRIC_NAMES = ("loss", "mse", "l0", "grad_norm")


def init_sae_params(sae: SAEConfig, stats: StreamStats) -> dict[str, torch.Tensor]:
    """An SAE's initial parameters in float64 on the CPU, from its own seed only.

    Decoder rows are Gaussian directions normalised to DECODER_INIT_NORM[arch]; W_enc = W_dec^T;
    b_enc = 0; b_dec = the stream's centre in training units. Drawing in float64 on the CPU
    makes an SAE's init independent of its bank, the device and the dtype.
    """
    generator = torch.Generator().manual_seed(sae.seed)
    w_dec = torch.randn(sae.d_sae, stats.d_in, generator=generator, dtype=torch.float64)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True) * DECODER_INIT_NORM[sae.arch]
    center = torch.from_numpy(np.asarray(stats.center, dtype=np.float64))
    return {
        "W_enc": w_dec.T.contiguous(),
        "b_enc": torch.zeros(sae.d_sae, dtype=torch.float64),
        "W_dec": w_dec,
        "b_dec": center * float(stats.scale),
    }


@dataclass
class _SubBank:
    """SAEs of one (arch, d_sae), their parameters stacked along dim 0."""

    arch: str
    d_sae: int
    positions: list[int]  # each SAE's index in bank order
    sae_ids: list[str]
    W_enc: torch.Tensor  # [n, d_in, d_sae]
    b_enc: torch.Tensor  # [n, d_sae]
    W_dec: torch.Tensor  # [n, d_sae, d_in]
    b_dec: torch.Tensor  # [n, d_in]
    lr: torch.Tensor  # [n] float64
    k: torch.Tensor  # [n] int64 (topk)
    l1: torch.Tensor  # [n] (relu)
    k_max: int
    k_mask: torch.Tensor  # [n, k_max]: 1 where rank < k_i (topk)
    optim: BankAdam

    @property
    def params(self) -> list[torch.Tensor]:
        return [self.W_enc, self.b_enc, self.W_dec, self.b_dec]


class SAEBank:
    """Trains `saes` together on one activation stream.

    `step(x)` takes one optimisation step of every SAE on the raw batch x [B, d_in] and returns
    per-SAE metrics in bank order (the order of `saes`): loss, mse (mean over rows of
    ||x*scale - x_hat||^2, the reconstruction term of the loss, in training units), l0 (mean
    active latents per row) and grad_norm (each SAE's gradient norm before clipping).
    """

    def __init__(self, saes: Sequence[SAEConfig], stats: StreamStats, train: TrainConfig,
                 total_steps: int, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if not saes:
            raise ValueError("an SAE bank needs at least one SAE")
        ids = [sae.sae_id for sae in saes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"SAE ids must be unique in a bank, got {ids}")
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        for sae in saes:
            if sae.arch not in ARCHITECTURES:
                raise ValueError(f"SAE {sae.sae_id!r}: unknown arch {sae.arch!r}; "
                                 f"known: {', '.join(ARCHITECTURES)}")
            if sae.d_sae <= 0:
                raise ValueError(f"SAE {sae.sae_id!r}: d_sae must be positive, got {sae.d_sae}")
            if sae.arch == "topk" and not 0 < sae.k <= sae.d_sae:
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
        inits = [init_sae_params(sae, self.stats) for sae in members]
        stacked = {name: torch.stack([init[name] for init in inits])
                   .to(device=self.device, dtype=self.dtype).requires_grad_(True)
                   for name in PARAM_NAMES}
        lr = torch.tensor([sae.lr for sae in members], dtype=torch.float64, device=self.device)
        k = torch.tensor([sae.k for sae in members], dtype=torch.int64, device=self.device)
        l1 = torch.tensor([sae.l1 for sae in members], dtype=self.dtype, device=self.device)
        k_max = int(k.max()) if arch == "topk" else 0
        k_mask = (torch.arange(k_max, device=self.device)[None, :] < k[:, None]).to(self.dtype)
        params = [stacked[name] for name in PARAM_NAMES]
        return _SubBank(arch=arch, d_sae=d_sae, positions=positions,
                        sae_ids=[sae.sae_id for sae in members], **stacked, lr=lr, k=k, l1=l1,
                        k_max=k_max, k_mask=k_mask, optim=BankAdam(params, lr))

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

    @staticmethod
    def _forward(sub: _SubBank, x_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents f [n, B, d_sae] and reconstruction [n, B, d_in] in training units."""
        centred = x_s.unsqueeze(0) - sub.b_dec.unsqueeze(1)
        pre = torch.baddbmm(sub.b_enc.unsqueeze(1), centred, sub.W_enc)
        if sub.arch == "topk":
            # One topk at the sub-bank's largest k; ranks >= k_i are masked out per SAE.
            values, indices = pre.topk(sub.k_max, dim=-1, sorted=True)
            values = values.relu() * sub.k_mask.unsqueeze(1)
            f = torch.zeros_like(pre).scatter(-1, indices, values)
        else:
            f = pre.relu()
        x_hat = torch.baddbmm(sub.b_dec.unsqueeze(1), f, sub.W_dec)
        return f, x_hat

    @torch.no_grad()
    def encode_decode(self, x_raw: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per SAE in bank order: (f [B, d_sae], x_hat [B, d_in] in raw units)."""
        x_s = self._scaled(x_raw)
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.saes)
        for sub in self._subs:
            f, x_hat = self._forward(sub, x_s)
            x_hat = x_hat / self.scale
            for j, pos in enumerate(sub.positions):
                out[pos] = (f[j], x_hat[j])
        return [pair for pair in out if pair is not None]

    # -- training ----------------------------------------------------------------------------

    def l1_ramp(self, step: int) -> float:
        """Share of each relu SAE's L1 coefficient in force at 0-based step `step`."""
        warmup = self.train.l1_warmup * self.total_steps
        return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0

    def step(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """One optimisation step of every SAE on the raw batch x [B, d_in]."""
        if len(x) == 0:
            raise ValueError("cannot step on an empty batch")
        x_s = self._scaled(x)
        t = self._steps_taken
        lr_scale = lr_multiplier(t, self.total_steps, self.train.warmup_steps,
                                 self.train.decay_start)
        l1_ramp = self.l1_ramp(t)
        metrics = np.zeros((len(METRIC_NAMES), len(self.saes)), dtype=np.float64)
        for sub in self._subs:
            values = self._step_sub_bank(sub, x_s, lr_scale, l1_ramp)
            metrics[:, sub.positions] = values.cpu().numpy()
        self.steps_taken = t + 1
        return {name: metrics[i] for i, name in enumerate(METRIC_NAMES)}

    def _step_sub_bank(self, sub: _SubBank, x_s: torch.Tensor, lr_scale: float,
                       l1_ramp: float) -> torch.Tensor:
        f, x_hat = self._forward(sub, x_s)
        mse = (x_hat - x_s.unsqueeze(0)).pow(2).sum(-1).mean(-1)  # [n]
        loss = mse
        if sub.arch == "relu":
            decoder_norms = sub.W_dec.norm(dim=-1)  # [n, d_sae]
            sparsity = (f * decoder_norms.unsqueeze(1)).sum(-1).mean(-1)
            loss = mse + sub.l1 * l1_ramp * sparsity
        # Parameters of different SAEs are disjoint, so the gradient of the sum is each SAE's own.
        grads = list(torch.autograd.grad(loss.sum(), sub.params))
        with torch.no_grad():
            if sub.arch == "topk":
                rows = sub.W_dec / sub.W_dec.norm(dim=-1, keepdim=True)
                grads[2] -= (grads[2] * rows).sum(-1, keepdim=True) * rows
            grad_norm = torch.stack([g.pow(2).flatten(1).sum(1) for g in grads]).sum(0).sqrt()
            if self.train.grad_clip > 0:
                coef = (self.train.grad_clip / (grad_norm + CLIP_EPS)).clamp(max=1.0)
                for g in grads:
                    g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))
            sub.optim.step(grads, lr_scale)
            if sub.arch == "topk":
                sub.W_dec.div_(sub.W_dec.norm(dim=-1, keepdim=True))
            l0 = (f > 0).sum(-1).to(torch.float64).mean(-1)
            return torch.stack([loss.detach().double(), mse.detach().double(), l0,
                                grad_norm.double()])

    # -- per-SAE access (checkpoints, export, statistics) --------------------------------------

    def _locate(self, sae_id: str) -> tuple[_SubBank, int]:
        try:
            return self._where[sae_id]
        except KeyError:
            raise KeyError(f"no SAE {sae_id!r} in this bank; it holds {self.sae_ids}") from None

    def sae_params(self, sae_id: str) -> dict[str, torch.Tensor]:
        """One SAE's parameters in training units, as CPU copies (W_enc is [d_in, d_sae])."""
        sub, j = self._locate(sae_id)
        return {name: p[j].detach().cpu().clone() for name, p in zip(PARAM_NAMES, sub.params,
                                                                      strict=True)}

    def get_sae_state(self, sae_id: str) -> dict[str, torch.Tensor]:
        """One SAE's parameters and Adam moments (CPU copies), keyed for a checkpoint."""
        sub, j = self._locate(sae_id)
        state = self.sae_params(sae_id)
        for prefix, moments in zip(MOMENT_PREFIXES, (sub.optim.exp_avg, sub.optim.exp_avg_sq),
                                   strict=True):
            for name, moment in zip(PARAM_NAMES, moments, strict=True):
                state[prefix + name] = moment[j].detach().cpu().clone()
        return state

    @torch.no_grad()
    def set_sae_state(self, sae_id: str, state: Mapping[str, torch.Tensor]) -> None:
        """Overwrite one SAE's parameters and Adam moments (the step count is the bank's)."""
        sub, j = self._locate(sae_id)
        targets: dict[str, torch.Tensor] = dict(zip(PARAM_NAMES, sub.params, strict=True))
        for prefix, moments in zip(MOMENT_PREFIXES, (sub.optim.exp_avg, sub.optim.exp_avg_sq),
                                   strict=True):
            targets.update({prefix + name: m for name, m in zip(PARAM_NAMES, moments,
                                                                 strict=True)})
        missing = sorted(set(targets) - set(state))
        if missing:
            raise KeyError(f"state for SAE {sae_id!r} lacks {missing}")
        for key, target in targets.items():
            value = state[key]
            if tuple(value.shape) != tuple(target.shape[1:]):
                raise ValueError(f"SAE {sae_id!r}: {key} has shape {tuple(value.shape)}, "
                                 f"expected {tuple(target.shape[1:])}")
            target[j].copy_(value.to(device=self.device, dtype=self.dtype))

    @torch.no_grad()
    def decoder_norms(self) -> dict[str, np.ndarray]:
        """Each SAE's decoder row norms [d_sae], in training units."""
        norms: dict[str, np.ndarray] = {}
        for sub in self._subs:
            values = sub.W_dec.norm(dim=-1).double().cpu().numpy()
            norms.update({sae_id: values[j] for j, sae_id in enumerate(sub.sae_ids)})
        return {sae_id: norms[sae_id] for sae_id in self.sae_ids}
