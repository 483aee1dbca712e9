"""SAEBank: many SAEs stepped together on one batch, their parameters stacked.

SAEs are grouped into sub-banks by (arch, d_sae) (thresher.train.archs.base.SubBank), each acted
on by its architecture's strategy (thresher.train.archs: one module per architecture, each
with its formulas and their source in its docstring). The bank keeps what they share: the stacking,
per-SAE hyperparameters as tensors (lr, mono_coef; the architecture holds its own), the
optimiser, gradient clipping, the learning-rate schedule and the checkpoint state, so one step
is a handful of batched ops whatever the number of SAEs. The parameters of different SAEs never
interact: the loss is the sum of per-SAE losses, gradient clipping and Adam act on each SAE's
own slice, selection (TopK, BatchTopK, dead latents) is per SAE, so an SAE trained in a bank
ends where it would alone.

Every SAE of a stream trains on x * scale, with the stream's one scale (E||x * scale|| = sqrt(d_in),
Anthropic April 2024); `encode_decode` takes and returns raw activations.

Architectures with unit-norm decoders (all but relu, and matryoshka unless
train.matryoshka.unit_norm_decoder) have the gradient component parallel to each decoder row
removed before the step and the rows renormalised after. MonoLoss: mono_coef * (1 -
mean batch MonoScore) on any arch (thresher.train.mono).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from thresher.config import ARCHITECTURES, SAEConfig, TrainConfig
from thresher.stream.stats import StreamStats
from thresher.train.archs.base import PARAM_NAMES, StepInputs, SubBank, per_sae
from thresher.train.archs.registry import architecture_class
from thresher.train.mono import mono_loss, unit_rows
from thresher.train.optim import BankAdam, lr_multiplier

# Adam moments are stored under these prefixes in an SAE's state (see SAEBank.get_sae_state).
MOMENT_PREFIXES = ("adam_m.", "adam_v.")
# torch.nn.utils.clip_grad_norm_'s guard against a zero norm; kept so clipping matches it.
CLIP_EPS = 1e-6
METRIC_NAMES = ("loss", "mse", "l0", "grad_norm", "aux_loss", "mono_score", "dead_fraction")


def init_sae_params(sae: SAEConfig, stats: StreamStats,
                    train: TrainConfig | None = None) -> dict[str, torch.Tensor]:
    """An SAE's initial parameters in float64 on the CPU, from its own seed only.

    Decoder rows are Gaussian directions normalised to the architecture's decoder_init_norm;
    W_enc = W_dec^T; b_enc = 0; b_dec = the stream's centre in training units; then the
    architecture's own parameters. Drawing in float64 on the CPU makes an SAE's init
    independent of its bank, the device and the dtype.
    """
    train = train or TrainConfig()
    arch = architecture_class(sae.arch)
    generator = torch.Generator().manual_seed(sae.seed)
    w_dec = torch.randn(sae.d_sae, stats.d_in, generator=generator, dtype=torch.float64)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True) * arch.decoder_init_norm
    center = torch.from_numpy(np.asarray(stats.center, dtype=np.float64))
    params = {
        "W_enc": w_dec.T.contiguous(),
        "b_enc": torch.zeros(sae.d_sae, dtype=torch.float64),
        "W_dec": w_dec,
        "b_dec": center * float(stats.scale),
    }
    params.update(arch.init_extra_params(sae, train))
    return params


class SAEBank:
    """Trains `saes` together on one activation stream.

    `step(x)` takes one optimisation step of every SAE on the raw batch x [B, d_in] and returns
    per-SAE metrics in bank order (the order of `saes`): loss, mse (mean over rows of
    ||x*scale - x_hat||^2, in training units), l0 (mean active latents per row), grad_norm (each
    SAE's gradient norm before clipping), aux_loss (the architecture's auxiliary loss before its
    weight, `TrainingPass.aux`: for the TopK family AuxK with its min(dead / aux_k, 1) weight,
    before train.<arch>.aux_k_coef, 0 without dead latents; 0 where an arch has none),
    mono_score (mean batch MonoScore; nan where mono_coef = 0) and dead_fraction (latents silent for
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
        for sae in saes:  # an SAEConfig names a known arch and exactly the keys it reads
            arch = architecture_class(sae.arch)
            if sae.d_sae <= 0:
                raise ValueError(f"SAE {sae.sae_id!r}: d_sae must be positive, got {sae.d_sae}")
            problems = arch.problems(sae)
            if problems:
                raise ValueError(f"SAE {sae.sae_id!r}: {'; '.join(problems)}")
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

    def _build_sub_bank(self, arch_name: str, d_sae: int, positions: list[int]) -> SubBank:
        members = [self.saes[i] for i in positions]
        arch = architecture_class(arch_name)(members, d_sae, self.train, self.device, self.dtype)
        names = PARAM_NAMES + arch.extra_param_names
        inits = [init_sae_params(sae, self.stats, self.train) for sae in members]
        stacked = {name: torch.stack([init[name] for init in inits])
                   .to(device=self.device, dtype=self.dtype).requires_grad_(True)
                   for name in names}
        lr = per_sae(members, "lr", torch.float64, self.device)
        return SubBank(
            arch=arch, d_sae=d_sae, positions=positions, members=members, p=stacked, lr=lr,
            mono_coef=per_sae(members, "mono_coef", self.dtype, self.device),
            rows_since_fired=torch.zeros(len(members), d_sae, dtype=torch.int64,
                                           device=self.device),
            optim=BankAdam([stacked[name] for name in names], lr),
            device=self.device, dtype=self.dtype, autocast=self.autocast)

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

    @torch.no_grad()
    def encode_decode(self, x_raw: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per SAE in bank order: (f [B, d_sae], x_hat [B, d_in] in raw units), inference mode
        (batchtopk and matryoshka apply their threshold)."""
        x_s = self._scaled(x_raw)
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.saes)
        for sub in self._subs:
            # The architecture's inference rule, the one the export is read back with.
            f = sub.arch.encode(x_s, sub.arch.export_weights(sub), sub.members)
            x_hat = sub.dense_decode(f) / self.scale
            for j, pos in enumerate(sub.positions):
                out[pos] = (f[j], x_hat[j])
        return [pair for pair in out if pair is not None]

    # -- training ----------------------------------------------------------------------------

    def step(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """One optimisation step of every SAE on the raw batch x [B, d_in]."""
        if len(x) == 0:
            raise ValueError("cannot step on an empty batch")
        x_s = self._scaled(x)
        t = self._steps_taken
        lr_scale = lr_multiplier(t, self.total_steps, self.train.warmup_steps,
                                 self.train.decay_start)
        metrics = np.zeros((len(METRIC_NAMES), len(self.saes)), dtype=np.float64)
        for sub in self._subs:
            values = self._step_sub_bank(sub, x_s, lr_scale, t)
            metrics[:, sub.positions] = values.cpu().numpy()
        self.steps_taken = t + 1
        return {name: metrics[i] for i, name in enumerate(METRIC_NAMES)}

    def _step_sub_bank(self, sub: SubBank, x_s: torch.Tensor, lr_scale: float,
                       t: int) -> torch.Tensor:
        mono_on = bool((sub.mono_coef > 0).any())
        inputs = StepInputs(x_s=x_s, target=x_s.unsqueeze(0),
                            dead=sub.rows_since_fired >= self.train.dead_window,
                            need_dense=mono_on, step=t, total_steps=self.total_steps)
        out = sub.arch.train_pass(sub, inputs)
        loss = out.loss
        mono_score = torch.full((sub.n,), math.nan, dtype=torch.float64, device=self.device)
        if mono_on:
            assert out.dense is not None
            mono = mono_loss(out.dense, unit_rows(x_s))
            loss = loss + sub.mono_coef * mono
            mono_score = torch.where(sub.mono_coef > 0, 1.0 - mono.detach().double(), mono_score)

        # Parameters of different SAEs are disjoint, so the gradient of the sum is each SAE's own.
        grads = list(torch.autograd.grad(loss.sum(), sub.params))
        with torch.no_grad():
            if sub.arch.unit_norm_decoder:
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
            if sub.arch.unit_norm_decoder:
                sub.p["W_dec"].div_(sub.p["W_dec"].norm(dim=-1, keepdim=True))
            sub.rows_since_fired.add_(len(x_s)).masked_fill_(out.fired, 0)
            sub.arch.after_step(sub, inputs, out)
            dead_fraction = (sub.rows_since_fired >= self.train.dead_window).double().mean(-1)
            return torch.stack([loss.detach().double(), out.mse.detach().double(), out.l0,
                                grad_norm.double(), out.aux.detach().double(), mono_score,
                                dead_fraction])

    # -- per-SAE access (checkpoints, export, statistics) --------------------------------------

    def _locate(self, sae_id: str) -> tuple[SubBank, int]:
        try:
            return self._where[sae_id]
        except KeyError:
            raise KeyError(f"no SAE {sae_id!r} in this bank; it holds {self.sae_ids}") from None

    def sae_params(self, sae_id: str) -> dict[str, torch.Tensor]:
        """One SAE's parameters in training units, as CPU copies (W_enc is [d_in, d_sae])."""
        sub, j = self._locate(sae_id)
        return {name: sub.p[name][j].detach().cpu().clone() for name in sub.param_names}

    def inference_params(self, sae_id: str) -> dict[str, torch.Tensor]:
        """What the export writes of one SAE, in training units: its architecture's
        `export_weights` (the four matrices, and e.g. a `threshold` [d_sae])."""
        sub, j = self._locate(sae_id)
        return {name: value[j].detach().cpu().clone()
                for name, value in sub.arch.export_weights(sub).items()}

    def get_sae_state(self, sae_id: str) -> dict[str, torch.Tensor]:
        """One SAE's parameters, Adam moments and buffers (CPU copies), keyed for a checkpoint."""
        sub, j = self._locate(sae_id)
        state = self.sae_params(sae_id)
        names = sub.param_names
        for prefix, moments in zip(MOMENT_PREFIXES, (sub.optim.exp_avg, sub.optim.exp_avg_sq),
                                   strict=True):
            for name, moment in zip(names, moments, strict=True):
                state[prefix + name] = moment[j].detach().cpu().clone()
        for name, buffer in sub.buffers.items():
            state[name] = buffer[j:j + 1].detach().cpu().clone().reshape(buffer.shape[1:] or (1,))
        return state

    @torch.no_grad()
    def set_sae_state(self, sae_id: str, state: Mapping[str, torch.Tensor]) -> None:
        """Overwrite one SAE's parameters, Adam moments and buffers (the step count is the
        bank's)."""
        sub, j = self._locate(sae_id)
        names = sub.param_names
        targets: dict[str, torch.Tensor] = {name: sub.p[name] for name in names}
        for prefix, moments in zip(MOMENT_PREFIXES, (sub.optim.exp_avg, sub.optim.exp_avg_sq),
                                   strict=True):
            targets.update({prefix + name: m for name, m in zip(names, moments, strict=True)})
        targets.update(sub.buffers)
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


def _check_train(train: TrainConfig) -> None:
    """The config's checks of what the bank reads, for a TrainConfig built without load_config
    (which reports the same with the file and line)."""
    problems = [f"train.{name}.{key} {message}" for name in ARCHITECTURES
                for key, message in train.arch_settings(name).problems()]
    if train.dead_window <= 0:
        problems.append(f"train.dead_window must be positive, got {train.dead_window}")
    if problems:
        raise ValueError("; ".join(problems))
