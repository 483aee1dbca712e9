"""The gated SAE (thresher/train/archs/gated.py) against a single-SAE reference written from the
paper's formulas, in a bank exactly as alone, resumed exactly, and through `thresher run`: its
export read back by FrozenSAE and by SAELens gives the same latents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import thresher
from tests.run_configs import with_arch_settings
from tests.trainer_resume import resumed_states
from thresher.analysis.frozen import FrozenSAE
from thresher.config import SAEConfig, TrainConfig
from thresher.stream.stats import StreamStats, estimate_stream_stats
from thresher.train.bank import SAEBank

F64 = torch.float64
D_IN = 16
TRAIN = with_arch_settings(TrainConfig(warmup_steps=2, decay_start=0.6, grad_clip=1.0),
                           coef_warmup=0.3)


def gated(sae_id: str, l1_coef: float = 0.5, seed: int = 0, d_sae: int = 48,
          lr: float = 3e-3, mono_coef: float = 0.0) -> SAEConfig:
    return SAEConfig(sae_id=sae_id, arch="gated", d_sae=d_sae, arch_keys={"l1_coef": l1_coef},
                     lr=lr, seed=seed, mono_coef=mono_coef)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, StreamStats]:
    rng = np.random.default_rng(1)
    basis = np.random.default_rng(42).normal(size=(40, D_IN))
    codes = rng.exponential(size=(1024, 40)) * (rng.random((1024, 40)) < 0.08)
    x = (codes @ basis + 0.5 + 0.05 * rng.normal(size=(1024, D_IN))).astype(np.float32)
    return x, estimate_stream_stats(x[:512])


def batches_of(x: np.ndarray, batch: int, steps: int) -> list[torch.Tensor]:
    return [torch.from_numpy(x[(i * batch) % len(x):][:batch]) for i in range(steps)]


def reference_training(cfg: SAEConfig, init: dict[str, torch.Tensor], scale: float,
                       total_steps: int, batches: list[torch.Tensor]
                       ) -> tuple[dict[str, torch.Tensor], list[float]]:
    """(final parameters, auxiliary loss per step) of one gated SAE trained by the paper's
    formulas, with thresher's unit-norm decoder, clipping and Adam schedule."""
    params = {name: torch.nn.Parameter(init[name].clone())
              for name in ("W_enc", "b_enc", "W_dec", "b_dec", "b_mag", "r_mag")}
    adam = torch.optim.Adam(params.values(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    w_enc, b_gate, w_dec, b_dec = (params[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    l1_coef = cfg.value("l1_coef")
    decay_begin = TRAIN.decay_start * total_steps
    aux_losses = []
    for t, x in enumerate(batches):
        x_s = x.to(F64) * scale
        ramp = min(1.0, (t + 1) / (TRAIN.arch_settings("gated").coef_warmup * total_steps))
        pi_gate = (x_s - b_dec) @ w_enc + b_gate
        w_mag = params["r_mag"].exp() * w_enc  # exp(r_mag) ⊙ W_gate, per latent
        pi_mag = (x_s - b_dec) @ w_mag + params["b_mag"]
        f = (pi_gate > 0).to(F64) * pi_mag.relu()
        x_hat = f @ w_dec + b_dec
        via_gate = pi_gate.relu() @ w_dec.detach() + b_dec.detach()
        aux = ((x_s - via_gate) ** 2).sum(-1).mean()
        loss = (((x_s - x_hat) ** 2).sum(-1).mean()
                + l1_coef * ramp * pi_gate.relu().sum(-1).mean() + aux)
        aux_losses.append(float(aux.detach()))
        adam.zero_grad()
        loss.backward()
        unit = (w_dec / w_dec.norm(dim=1, keepdim=True)).detach()
        assert w_dec.grad is not None
        w_dec.grad -= (w_dec.grad * unit).sum(1, keepdim=True) * unit
        torch.nn.utils.clip_grad_norm_(list(params.values()), TRAIN.grad_clip)
        warm = min(1.0, (t + 1) / TRAIN.warmup_steps)
        decay = 1.0 if t < decay_begin else (total_steps - t) / (total_steps - decay_begin)
        for group in adam.param_groups:
            group["lr"] = cfg.lr * min(warm, decay)
        adam.step()
        with torch.no_grad():
            w_dec /= w_dec.norm(dim=1, keepdim=True)
    return {name: p.detach() for name, p in params.items()}, aux_losses


def test_gated_matches_its_formulas(data: tuple[np.ndarray, StreamStats]) -> None:
    x, stats = data
    cfg = gated("g", l1_coef=0.5, seed=3)
    total = 10
    bank = SAEBank([cfg], stats, TRAIN, total, dtype=F64)
    init = bank.sae_params("g")
    assert torch.all(init["b_mag"] == 0) and torch.all(init["r_mag"] == 0)
    batches = batches_of(x, 64, total)
    metrics = [bank.step(b) for b in batches]
    expected, aux_losses = reference_training(cfg, init, stats.scale, total, batches)
    for name, value in expected.items():
        torch.testing.assert_close(bank.sae_params("g")[name], value, rtol=0, atol=1e-10,
                                   msg=name)
    np.testing.assert_allclose([m["aux_loss"][0] for m in metrics], aux_losses, rtol=1e-9)
    assert float(expected["r_mag"].abs().max()) > 0  # the magnitude path's scale was trained
    # Inference: the gate picks, the magnitude path sets the value.
    ((f, _),) = bank.encode_decode(torch.from_numpy(x[:64]))
    p = bank.sae_params("g")
    x_s = torch.from_numpy(x[:64]).to(F64) * stats.scale
    pi_gate = (x_s - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    pi_mag = (x_s - p["b_dec"]) @ (p["W_enc"] * p["r_mag"].exp()) + p["b_mag"]
    torch.testing.assert_close(f, (pi_gate > 0).to(F64) * pi_mag.relu())
    assert 0 < float((f > 0).to(F64).sum(-1).mean()) < cfg.d_sae


def test_gated_trains_in_a_bank_exactly_as_alone(data: tuple[np.ndarray, StreamStats]) -> None:
    x, stats = data
    saes = [gated("g-a", l1_coef=0.2, seed=1), gated("g-b", l1_coef=1.0, seed=2, lr=1e-3),
            gated("g-mono", l1_coef=0.5, seed=3, mono_coef=0.3),
            gated("g-wide", l1_coef=0.5, seed=4, d_sae=64),
            SAEConfig(sae_id="relu", arch="relu", d_sae=48, arch_keys={"l1_coef": 0.5}, seed=5),
            SAEConfig(sae_id="topk", arch="topk", d_sae=48, arch_keys={"k": 4}, seed=6)]
    batches = batches_of(x, 64, 8)
    bank = SAEBank(saes, stats, TRAIN, 8, dtype=F64)
    metrics = [bank.step(b) for b in batches]
    for i, s in enumerate(saes):
        alone = SAEBank([s], stats, TRAIN, 8, dtype=F64)
        alone_metrics = [alone.step(b) for b in batches]
        state, alone_state = bank.get_sae_state(s.sae_id), alone.get_sae_state(s.sae_id)
        assert state.keys() == alone_state.keys()
        for key in state:
            torch.testing.assert_close(state[key], alone_state[key], rtol=0, atol=1e-10,
                                       msg=f"{s.sae_id} {key}")
        for m_bank, m_alone in zip(metrics, alone_metrics, strict=True):
            for key in m_alone:
                assert m_bank[key][i] == pytest.approx(m_alone[key][0], rel=1e-9, abs=1e-12,
                                                       nan_ok=True), (s.sae_id, key)


def test_gated_resumes_exactly(tmp_path: Path, data: tuple[np.ndarray, StreamStats]) -> None:
    x, stats = data
    saes = [gated("g-a", seed=1), gated("g-b", l1_coef=1.0, seed=2)]
    train = TrainConfig(batch_size=64, rows=64 * 10, warmup_steps=2)
    for a, b in resumed_states(saes, train, stats, x, tmp_path):
        assert {"b_mag", "r_mag", "adam_m.r_mag"} <= set(a)
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_a_run_exports_gated_saes_that_frozen_sae_and_saelens_read_alike(tmp_path: Path) -> None:
    sae_lens = pytest.importorskip("sae_lens")
    config = {
        "run": {"name": "gated", "out": str(tmp_path)},
        "source": {"backbone": {"kind": "synthetic", "n_features": 96, "d_in": 32,
                                "mean_l0": 4, "seed": 0},
                   "hook": "synthetic"},
        "stream": {"chunk_rows": 1024, "capacity_chunks": 8, "mix_chunks": 2,
                   "holdout_rows": 1024, "norm_rows": 1024},
        "train": {"batch_size": 256, "rows": 4096, "checkpoint_every": 8, "d_sae": 64,
                  "lr": 2e-3},
        "sweep": [{"arch": "gated", "l1_coef": [0.5, 2.0]}, {"arch": "topk", "k": 4}],
        "resources": {"harvesters": 1, "trainers": 1},
    }
    run_dir = Path(thresher.run(config, inline=True, progress=False))
    summary = {row["sae_id"]: row for row in pq.read_table(run_dir / "stats"
                                                           / "summary.parquet").to_pylist()}
    assert set(summary) == {"00-gated-l1_coef0.5", "01-gated-l1_coef2", "02-topk-k4"}
    for sae_id, l1_coef in (("00-gated-l1_coef0.5", 0.5), ("01-gated-l1_coef2", 2.0)):
        row = summary[sae_id]
        assert (row["arch"], row["l1_coef"], row["k"], row["l0_coef"]) == ("gated", l1_coef,
                                                                           None, None)
        assert 0 < row["l0"] < 64 and row["fve"] > 0
    assert summary["00-gated-l1_coef0.5"]["l0"] > summary["01-gated-l1_coef2"]["l0"]
    x = torch.randn(300, 32, generator=torch.Generator().manual_seed(0)) * 2.0
    for sae_id in ("00-gated-l1_coef0.5", "01-gated-l1_coef2"):
        folder = run_dir / "saes" / sae_id
        cfg = json.loads((folder / "cfg.json").read_text())
        assert cfg["architecture"] == "gated"
        frozen = FrozenSAE.load(folder)
        assert set(frozen.weights) == {"W_enc", "W_dec", "b_dec", "b_gate", "b_mag", "r_mag"}
        loaded = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
        assert type(loaded).__name__ == "GatedSAE"
        f, x_hat = frozen.encode_decode(x)
        with torch.no_grad():
            f_lens = loaded.encode(x)
            x_hat_lens = loaded.decode(f_lens)
        assert 0 < float((f > 0).float().sum(1).mean()) < 64
        assert ((f > 0) != (f_lens > 0)).float().mean() < 1e-3
        torch.testing.assert_close(f_lens, f, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(x_hat_lens, x_hat, rtol=1e-4, atol=1e-4)
