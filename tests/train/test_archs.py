"""Every architecture against a plain single-SAE reference written from the formulas, the bank
against the same SAEs trained alone, the JumpReLU estimator, and checkpoints of the new state."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.oracles import mono_pairwise_loss
from tests.paths import PACKAGE
from tests.run_configs import with_arch_settings
from tests.trainer_resume import resumed_states
from thresher.config import ARCHITECTURES, SAEConfig, TrainConfig
from thresher.config.saes import own_arch_keys
from thresher.stream.stats import StreamStats, estimate_stream_stats
from thresher.train.archs.base import PARAM_NAMES, Architecture
from thresher.train.archs.jumprelu import jumprelu, step_function
from thresher.train.archs.matryoshka import matryoshka_widths
from thresher.train.archs.registry import architecture_class
from thresher.train.archs.relu import resample_uniforms
from thresher.train.archs.topk_family import TopKFamily
from thresher.train.bank import SAEBank

F64 = torch.float64
D_IN = 16
TOPK_FAMILY = tuple(a for a in ARCHITECTURES if issubclass(architecture_class(a), TopKFamily))


def make_data(rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(42).normal(size=(40, D_IN))
    codes = rng.exponential(size=(rows, 40)) * (rng.random((rows, 40)) < 0.08)
    return (codes @ basis + 0.5 + 0.05 * rng.normal(size=(rows, D_IN))).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, StreamStats]:
    x = make_data(1024, seed=1)
    return x, estimate_stream_stats(x[:512])


def sae(sae_id: str, arch: str, d_sae: int = 48, k: int = 4, l1_coef: float = 0.3,
        l0_coef: float = 0.05, lr: float = 3e-3, seed: int = 0,
        mono_coef: float = 0.0) -> SAEConfig:
    keys = own_arch_keys(arch, {"k": k, "l1_coef": l1_coef, "l0_coef": l0_coef})
    return SAEConfig(sae_id=sae_id, arch=arch, d_sae=d_sae, lr=lr, seed=seed,
                     mono_coef=mono_coef, arch_keys=keys)


def param_names(arch: str) -> tuple[str, ...]:
    return PARAM_NAMES + architecture_class(arch).extra_param_names


def batches_of(x: np.ndarray, batch: int, steps: int) -> list[torch.Tensor]:
    return [torch.from_numpy(x[(i * batch) % len(x):][:batch]) for i in range(steps)]


# A short dead window so AuxK (and resampling) act within ten steps.
TRAIN = with_arch_settings(
    TrainConfig(warmup_steps=2, decay_start=0.6, grad_clip=1.0, dead_window=64),
    coef_warmup=0.3, bandwidth=0.5, init_threshold=0.3, fractions=(0.25, 0.5), threshold_ema=0.1)


# --------------------------------------------------------------------------------------------
# A plain reference: one SAE, dense, torch.optim.Adam, written from the formulas
# --------------------------------------------------------------------------------------------


def ste(value: torch.Tensor, theta: torch.Tensor, d_theta: torch.Tensor) -> torch.Tensor:
    """`value` forward, with gradient d_theta (per element) to theta: a straight-through trick."""
    return value + ((theta - theta.detach()) * d_theta.detach())


def unit_norm_decoder(cfg: SAEConfig, train: TrainConfig) -> bool:
    """Decoder rows held at unit norm: all but relu's, and matryoshka's only when set."""
    return cfg.arch != "relu" and (cfg.arch != "matryoshka" or train.matryoshka.unit_norm_decoder)


def reference_training(cfg: SAEConfig, init: dict[str, torch.Tensor], scale: float,
                       train: TrainConfig, total_steps: int, batches: list[torch.Tensor]
                       ) -> tuple[dict[str, torch.Tensor], list[float], float]:
    """(final parameters, AuxK loss per step, batchtopk threshold)."""
    names = param_names(cfg.arch)
    params = {name: torch.nn.Parameter(init[name].clone()) for name in names}
    adam = torch.optim.Adam(params.values(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    w_enc, b_enc, w_dec, b_dec = (params[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    since = torch.zeros(cfg.d_sae, dtype=torch.int64)
    threshold = math.nan
    aux_losses = []
    decay_begin = train.decay_start * total_steps
    unit_norm = unit_norm_decoder(cfg, train)
    for t, x in enumerate(batches):
        x_s = x.to(F64) * scale
        rows = len(x_s)
        warmup = train.jumprelu.coef_warmup if cfg.arch == "jumprelu" else train.relu.coef_warmup
        ramp = min(1.0, (t + 1) / (warmup * total_steps))
        pre = (x_s - b_dec) @ w_enc + b_enc
        if cfg.arch == "topk":
            values, indices = pre.topk(cfg.value("k"), dim=-1)
            f = torch.zeros_like(pre).scatter(-1, indices, values.relu())
        elif cfg.arch in ("batchtopk", "matryoshka"):
            values, indices = pre.relu().flatten().topk(cfg.value("k") * rows)
            f = torch.zeros_like(pre).flatten().scatter(0, indices, values).view_as(pre)
            kept = values[values > 0]
            smallest = float(kept.detach().min())
            threshold = (smallest if math.isnan(threshold)
                         else threshold + train.batchtopk.threshold_ema * (smallest - threshold))
        elif cfg.arch == "jumprelu":
            theta = params["log_threshold"].exp()
            eps = train.jumprelu.bandwidth
            window = ((pre - theta).abs() < eps / 2).to(F64)
            above = (pre > theta).to(F64)
            f = ste(pre * above, theta, -(theta / eps) * window)
            l0 = ste(above, theta, -(1 / eps) * window).sum(-1).mean()
        else:
            f = pre.relu()
        x_hat = f @ w_dec + b_dec
        loss = ((x_s - x_hat) ** 2).sum(-1).mean()
        if cfg.arch == "relu":
            loss = loss + cfg.value("l1_coef") * ramp * (f * w_dec.norm(dim=1)).sum(-1).mean()
        if cfg.arch == "jumprelu":
            loss = loss + cfg.value("l0_coef") * ramp * l0
        if cfg.arch == "matryoshka":
            for width in matryoshka_widths(cfg.d_sae, train.matryoshka.fractions)[:-1]:
                inner = f[:, :width] @ w_dec[:width] + b_dec
                loss = loss + ((x_s - inner) ** 2).sum(-1).mean()
        aux_value = 0.0
        dead = since >= train.dead_window
        if cfg.arch in TOPK_FAMILY and dead.any():
            k_aux = D_IN // 2
            n_dead = int(dead.sum())
            masked = torch.where(dead, pre, -math.inf)
            aux_vals, aux_idx = masked.topk(min(k_aux, n_dead), dim=-1)
            aux_f = torch.zeros_like(pre).scatter(-1, aux_idx, aux_vals)
            residual = (x_s - x_hat).detach()
            aux = min(n_dead / k_aux, 1.0) * ((aux_f @ w_dec - residual) ** 2).sum(-1).mean()
            loss = loss + train.topk.aux_k_coef * aux
            aux_value = float(aux.detach())
        aux_losses.append(aux_value)
        if cfg.mono_coef:
            loss = loss + cfg.mono_coef * mono_pairwise_loss(f, x_s)
        adam.zero_grad()
        loss.backward()
        if unit_norm:
            unit = (w_dec / w_dec.norm(dim=1, keepdim=True)).detach()
            assert w_dec.grad is not None
            w_dec.grad -= (w_dec.grad * unit).sum(1, keepdim=True) * unit
        torch.nn.utils.clip_grad_norm_(list(params.values()), train.grad_clip)
        warm = min(1.0, (t + 1) / train.warmup_steps)
        decay = 1.0 if t < decay_begin else (total_steps - t) / (total_steps - decay_begin)
        for group in adam.param_groups:
            group["lr"] = cfg.lr * min(warm, decay)
        adam.step()
        with torch.no_grad():
            if unit_norm:
                w_dec /= w_dec.norm(dim=1, keepdim=True)
            since += rows
            since[(f > 0).any(0)] = 0
    return {name: p.detach() for name, p in params.items()}, aux_losses, threshold


ARCH_CASES = [
    sae("topk", "topk", d_sae=128, k=3, seed=7),
    sae("batchtopk", "batchtopk", d_sae=128, k=3, seed=8),
    sae("matryoshka", "matryoshka", d_sae=128, k=3, seed=9),
    sae("jumprelu", "jumprelu", l0_coef=0.05, seed=10),
    sae("relu", "relu", l1_coef=0.3, seed=11),
    sae("topk-mono", "topk", k=4, seed=12, mono_coef=0.5),
    sae("relu-mono", "relu", l1_coef=0.3, seed=13, mono_coef=0.5),
]


@pytest.mark.parametrize(("cfg", "train"), [
    *((c, TRAIN) for c in ARCH_CASES),
    (sae("matryoshka-unit", "matryoshka", d_sae=128, k=3, seed=9),
     with_arch_settings(TRAIN, unit_norm_decoder=True)),
], ids=[*(c.sae_id for c in ARCH_CASES), "matryoshka-unit"])
def test_each_arch_matches_its_plain_reference(cfg: SAEConfig, train: TrainConfig,
                                               data: tuple[np.ndarray, StreamStats]) -> None:
    x, stats = data
    total = 10
    bank = SAEBank([cfg], stats, train, total, dtype=F64)
    init = bank.sae_params(cfg.sae_id)
    batches = batches_of(x, 64, total)
    metrics = [bank.step(b) for b in batches]
    expected, aux_losses, threshold = reference_training(cfg, init, stats.scale, train, total,
                                                         batches)
    for name in param_names(cfg.arch):
        torch.testing.assert_close(bank.sae_params(cfg.sae_id)[name], expected[name], rtol=0,
                                   atol=1e-10, msg=name)
    np.testing.assert_allclose([m["aux_loss"][0] for m in metrics], aux_losses, rtol=1e-9,
                               atol=1e-12)
    if cfg.arch in TOPK_FAMILY:
        assert max(aux_losses) > 0  # AuxK acted: the test checks it
    if cfg.arch in ("batchtopk", "matryoshka"):
        theta = bank.inference_params(cfg.sae_id)["threshold"]
        np.testing.assert_allclose(theta.numpy(), threshold, rtol=1e-12)
        # batch-level L0 averages k in training
        assert all(m["l0"][0] == pytest.approx(cfg.value("k"), abs=1e-9) for m in metrics)


def test_every_arch_trains_in_a_bank_exactly_as_alone(
        data: tuple[np.ndarray, StreamStats]) -> None:
    x, stats = data
    train = with_arch_settings(TRAIN, resample_every=4)
    total = 10
    saes = [
        sae("topk-k4", "topk", k=4, lr=1e-3, seed=1),
        sae("btk-k3", "batchtopk", k=3, lr=2e-3, seed=2),
        sae("mat-k4", "matryoshka", k=4, lr=2e-3, seed=3),
        sae("jr-a", "jumprelu", l0_coef=0.02, lr=2e-3, seed=4),
        sae("relu-a", "relu", l1_coef=0.1, lr=2e-3, seed=5),
        sae("topk-k7", "topk", k=7, lr=3e-3, seed=6, mono_coef=0.3),
        sae("btk-k6", "batchtopk", k=6, lr=1e-3, seed=7),
        sae("jr-b", "jumprelu", l0_coef=0.1, lr=1e-3, seed=8, mono_coef=0.2),
        sae("relu-b", "relu", l1_coef=1.0, lr=3e-3, seed=9),
        sae("mat-wide", "matryoshka", d_sae=64, k=5, lr=1e-3, seed=10),
    ]
    batches = batches_of(x, 64, total)
    bank = SAEBank(saes, stats, train, total, dtype=F64)
    metrics = [bank.step(b) for b in batches]
    assert max(m["dead_fraction"].max() for m in metrics) > 0  # dead latents were handled
    for i, s in enumerate(saes):
        alone = SAEBank([s], stats, train, total, dtype=F64)
        alone_metrics = [alone.step(b) for b in batches]
        state, alone_state = bank.get_sae_state(s.sae_id), alone.get_sae_state(s.sae_id)
        assert state.keys() == alone_state.keys()
        for key in state:
            torch.testing.assert_close(state[key], alone_state[key], rtol=0, atol=1e-10,
                                       equal_nan=True, msg=f"{s.sae_id} {key}")
        for m_bank, m_alone in zip(metrics, alone_metrics, strict=True):
            for key in m_alone:
                assert m_bank[key][i] == pytest.approx(m_alone[key][0], rel=1e-9, abs=1e-12,
                                                       nan_ok=True), (s.sae_id, key)


def test_sparse_and_dense_decode_train_the_same_bank(
        data: tuple[np.ndarray, StreamStats]) -> None:
    x, stats = data
    saes = [sae("a", "topk", k=3, seed=1), sae("b", "topk", k=6, seed=2, mono_coef=0.2),
            sae("c", "batchtopk", k=4, seed=3), sae("d", "matryoshka", k=4, seed=4)]
    banks = [SAEBank(saes, stats, with_arch_settings(TRAIN, sparse_decode=sparse), 8, dtype=F64)
             for sparse in (True, False)]
    for batch in batches_of(x, 64, 8):
        m_sparse, m_dense = (b.step(batch) for b in banks)
        np.testing.assert_allclose(m_sparse["loss"], m_dense["loss"], rtol=1e-12)
    for s in saes:
        a, b = (bank.get_sae_state(s.sae_id) for bank in banks)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-11, equal_nan=True)


def test_resampling_restarts_dead_relu_latents(data: tuple[np.ndarray, StreamStats]) -> None:
    x, stats = data
    train = with_arch_settings(TrainConfig(warmup_steps=1, dead_window=64), resample_every=2,
                               coef_warmup=0.0)
    bank = SAEBank([sae("r", "relu", l1_coef=0.1, lr=1e-3, seed=3)], stats, train, 4, dtype=F64)
    state = bank.get_sae_state("r")
    killed = torch.arange(10)
    state["b_enc"][killed] = -1e3  # these latents never fire
    bank.set_sae_state("r", state)
    batches = batches_of(x, 64, 2)
    first = bank.step(batches[0])
    assert first["dead_fraction"][0] >= 10 / 48  # dead after one window, not resampled yet
    second = bank.step(batches[1])
    after = bank.sae_params("r")
    assert second["dead_fraction"][0] == 0  # every dead latent was restarted
    assert torch.all(after["b_enc"][killed] == 0)
    alive = torch.ones(48, dtype=torch.bool)
    alive[killed] = False
    x_s = batches[1].to(F64) * stats.scale
    units = x_s / x_s.norm(dim=1, keepdim=True)
    for j in killed.tolist():
        direction = after["W_dec"][j] / after["W_dec"][j].norm()
        # decoder row and encoder column both point along one of the batch's rows
        assert float((units @ direction).max()) == pytest.approx(1.0, abs=1e-9)
        enc = after["W_enc"][:, j]
        assert float(enc @ direction / enc.norm()) == pytest.approx(1.0, abs=1e-9)
    # scales: the mean alive decoder norm, 0.2 x the mean alive encoder norm
    np.testing.assert_allclose(after["W_dec"][killed].norm(dim=1).numpy(),
                               float(after["W_dec"][alive].norm(dim=1).mean()), rtol=0.05)
    np.testing.assert_allclose(after["W_enc"][:, killed].norm(dim=0).numpy(),
                               0.2 * float(after["W_enc"][:, alive].norm(dim=0).mean()),
                               rtol=0.05)


def test_resampling_draws_depend_only_on_seed_and_step() -> None:
    """A resumed run (a new process) must resample as the first would: the draw may not come
    from Python's per-process salted hash()."""
    code = ("from thresher.train.archs.relu import resample_uniforms; "
            "print(resample_uniforms(3, 41, 5).tolist())")
    # Another hash salt than this process's (random unless PYTHONHASHSEED pins it).
    salt = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": salt}, timeout=120, check=True)
    assert child.stdout == f"{resample_uniforms(3, 41, 5).tolist()}\n"
    assert not torch.equal(resample_uniforms(3, 41, 5), resample_uniforms(3, 42, 5))
    assert not torch.equal(resample_uniforms(3, 41, 5), resample_uniforms(4, 41, 5))


# --------------------------------------------------------------------------------------------
# JumpReLU's straight-through estimator
# --------------------------------------------------------------------------------------------


def test_jumprelu_estimator_gradients() -> None:
    pre = torch.tensor([[0.05, 0.32, 0.29, 0.9]], dtype=F64, requires_grad=True)
    theta = torch.tensor([0.3, 0.3, 0.3, 0.3], dtype=F64, requires_grad=True)
    bandwidth = 0.1
    out = jumprelu(pre, theta, bandwidth)
    np.testing.assert_allclose(out.detach().numpy(), [[0.0, 0.32, 0.0, 0.9]])
    out.sum().backward()
    assert pre.grad is not None and theta.grad is not None
    np.testing.assert_allclose(pre.grad.numpy(), [[0, 1, 0, 1]])
    # -(theta / eps) inside the window |pre - theta| < eps / 2, else 0
    np.testing.assert_allclose(theta.grad.numpy(), [0, -3, -3, 0])
    theta.grad = None
    steps = step_function(pre, theta, bandwidth)
    np.testing.assert_allclose(steps.detach().numpy(), [[0, 1, 0, 1]])
    steps.sum().backward()
    np.testing.assert_allclose(theta.grad.numpy(), [0, -10, -10, 0])


# --------------------------------------------------------------------------------------------
# Checkpoints carry the new state (thresholds, dead-latent counters)
# --------------------------------------------------------------------------------------------


def test_resume_is_exact_for_every_arch(tmp_path: Path, data: tuple[np.ndarray, StreamStats]
                                        ) -> None:
    x, stats = data
    saes = [sae(f"{i:02d}-{arch}", arch, seed=i) for i, arch in
            enumerate(("topk", "batchtopk", "matryoshka", "jumprelu", "relu"))]
    train = dataclasses.replace(TRAIN, batch_size=64, rows=64 * 10)
    for a, b in resumed_states(saes, train, stats, x, tmp_path):
        assert "rows_since_fired" in a
        for key in a:
            assert torch.equal(a[key], b[key]) or (a[key].isnan().all() and b[key].isnan().all())


# --------------------------------------------------------------------------------------------
# The registry: one module per architecture
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_each_arch_is_the_class_of_its_own_module(name: str) -> None:
    cls = architecture_class(name)
    assert cls.name == name
    assert cls.__module__ == f"thresher.train.archs.{name}"
    assert issubclass(cls, Architecture) and not inspect.isabstract(cls)
    # it reads its own section of the train config, train.<name>
    train = with_arch_settings(TRAIN, coef_warmup=0.125)
    arch = cls([sae("a", name)], 48, train, torch.device("cpu"), F64)
    assert arch.settings is getattr(train, name)


def test_the_registry_knows_every_configured_arch_and_no_other() -> None:
    assert {architecture_class(name).name for name in ARCHITECTURES} == set(ARCHITECTURES)
    with pytest.raises(ValueError, match="unknown arch 'sparse'; known: batchtopk, "):
        architecture_class("sparse")


def test_no_module_outside_the_declaration_and_archs_names_an_architecture() -> None:
    """What an architecture does lives in its own module: nothing else tests `arch` by name."""
    package = PACKAGE
    allowed = {package / "config" / "saes.py", *(package / "config" / "archs").glob("*.py"),
               *(package / "train" / "archs").glob("*.py")}
    named = [f"{path.relative_to(package)}:{node.lineno}"
             for path in sorted(package.rglob("*.py")) if path not in allowed
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Constant) and node.value in ARCHITECTURES]
    assert named == []
