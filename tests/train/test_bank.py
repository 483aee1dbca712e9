"""SAEBank and BankAdam against independent reference computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.run_configs import with_arch_settings
from thresher.config import SAEConfig, TrainConfig
from thresher.config.saes import own_arch_keys
from thresher.stream.stats import StreamStats, estimate_stream_stats
from thresher.train.archs.base import PARAM_NAMES
from thresher.train.bank import SAEBank
from thresher.train.optim import BankAdam, lr_multiplier

F64 = torch.float64


def sparse_dictionary_data(rows: int, d_in: int = 32, n_features: int = 64, active: int = 3,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows that are sparse sums of a known dictionary (unit directions), plus an offset."""
    rng = np.random.default_rng(seed)
    dictionary = rng.normal(size=(n_features, d_in))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    chosen = rng.random((rows, n_features)).argsort(axis=1)[:, :active]
    codes = np.zeros((rows, n_features))
    np.put_along_axis(codes, chosen, rng.uniform(1.0, 3.0, size=(rows, active)), axis=1)
    offset = rng.normal(size=d_in) * 0.5
    x = codes @ dictionary + offset + 0.01 * rng.normal(size=(rows, d_in))
    return x.astype(np.float32), dictionary


def sae(sae_id: str, arch: str = "topk", d_sae: int = 48, k: int = 4, l1_coef: float = 1.0,
        lr: float = 1e-3, seed: int = 0) -> SAEConfig:
    keys = own_arch_keys(arch, {"k": k, "l1_coef": l1_coef})
    return SAEConfig(sae_id=sae_id, arch=arch, d_sae=d_sae, arch_keys=keys, lr=lr, seed=seed)


def batches_of(x: np.ndarray, batch: int, steps: int) -> list[torch.Tensor]:
    return [torch.from_numpy(x[(i * batch) % len(x):][:batch]) for i in range(steps)]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, StreamStats]:
    x, _ = sparse_dictionary_data(2048, d_in=16, n_features=40, seed=1)
    return x, estimate_stream_stats(x[:1024])


# --------------------------------------------------------------------------------------------
# Schedule and optimiser
# --------------------------------------------------------------------------------------------


def test_lr_multiplier_warms_up_holds_and_decays() -> None:
    values = [lr_multiplier(s, total_steps=100, warmup_steps=10, decay_start=0.8)
              for s in (0, 4, 9, 50, 79, 80, 90, 99)]
    assert values == pytest.approx([0.1, 0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.05])
    assert lr_multiplier(0, 10, warmup_steps=0, decay_start=1.0) == 1.0
    assert lr_multiplier(9, 10, warmup_steps=0, decay_start=1.0) == 1.0
    # decay from the start, warm-up longer than the run: the smaller factor wins
    assert lr_multiplier(5, 10, warmup_steps=20, decay_start=0.0) == pytest.approx(0.3)


def test_bank_adam_equals_torch_adam_per_sae() -> None:
    torch.manual_seed(0)
    lrs = [1e-3, 3e-3, 1e-2]
    shapes = [(5, 4), (4,)]
    init = [torch.randn(len(lrs), *shape, dtype=F64) for shape in shapes]
    stacked = [p.clone() for p in init]
    bank_adam = BankAdam(stacked, torch.tensor(lrs, dtype=F64))
    alone = [[torch.nn.Parameter(p[i].clone()) for p in init] for i in range(len(lrs))]
    torch_adams = [torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
                   for params, lr in zip(alone, lrs, strict=True)]
    for step in range(12):
        grads = [torch.randn_like(p) * (10.0 ** (step % 3 - 1)) for p in stacked]
        scale = lr_multiplier(step, 12, warmup_steps=3, decay_start=0.5)
        bank_adam.step(grads, lr_scale=scale)
        for i, (params, adam) in enumerate(zip(alone, torch_adams, strict=True)):
            for p, g in zip(params, grads, strict=True):
                p.grad = g[i].clone()
            for group in adam.param_groups:
                group["lr"] = lrs[i] * scale
            adam.step()
    for i, params in enumerate(alone):
        for p_bank, p_alone in zip(stacked, params, strict=True):
            torch.testing.assert_close(p_bank[i], p_alone.detach(), rtol=0, atol=1e-13)
        state = torch_adams[i].state[params[0]]
        torch.testing.assert_close(bank_adam.exp_avg[0][i], state["exp_avg"], rtol=0, atol=1e-15)
        torch.testing.assert_close(bank_adam.exp_avg_sq[0][i], state["exp_avg_sq"], rtol=0,
                                   atol=1e-15)


# --------------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------------


def test_init_follows_the_recipe_and_depends_only_on_the_seed(
        data: tuple[np.ndarray, StreamStats]) -> None:
    _, stats = data
    a, b = sae("a", "topk", seed=3), sae("b", "relu", seed=4)
    train = TrainConfig()
    big = SAEBank([sae("x", seed=9), a, sae("y", "relu", d_sae=16), b], stats, train, 10,
                  dtype=F64)
    alone_a = SAEBank([a], stats, train, 10, dtype=F64)
    single = SAEBank([a, b], stats, train, 10, dtype=torch.float32)
    for s, row_norm in ((a, 1.0), (b, 0.1)):
        p = big.sae_params(s.sae_id)
        np.testing.assert_allclose(p["W_dec"].norm(dim=1).numpy(), row_norm, rtol=1e-12)
        assert torch.equal(p["W_enc"], p["W_dec"].T)
        assert torch.equal(p["b_enc"], torch.zeros(s.d_sae, dtype=F64))
        np.testing.assert_allclose(p["b_dec"].numpy(),
                                   stats.center.astype(np.float64) * stats.scale, rtol=1e-12)
        for name in PARAM_NAMES:
            assert torch.equal(single.sae_params(s.sae_id)[name], p[name].float())
    for name in PARAM_NAMES:
        assert torch.equal(alone_a.sae_params("a")[name], big.sae_params("a")[name])
    # different seeds draw different directions
    assert not torch.equal(big.sae_params("x")["W_dec"], big.sae_params("a")["W_dec"])


def test_bank_rejects_impossible_configs(data: tuple[np.ndarray, StreamStats]) -> None:
    _, stats = data
    with pytest.raises(ValueError, match="k must be in"):
        SAEBank([sae("a", k=100, d_sae=48)], stats, TrainConfig(), 10)
    with pytest.raises(ValueError, match="unique"):
        SAEBank([sae("a"), sae("a")], stats, TrainConfig(), 10)
    bank = SAEBank([sae("a")], stats, TrainConfig(), 10)
    with pytest.raises(ValueError, match=r"\[rows, 16\]"):
        bank.step(torch.zeros(4, 15))


# --------------------------------------------------------------------------------------------
# The bank against a plain single-SAE reference and against itself
# --------------------------------------------------------------------------------------------


def reference_training(cfg: SAEConfig, init: dict[str, torch.Tensor], scale: float,
                       train: TrainConfig, total_steps: int,
                       batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """One SAE trained by torch.optim.Adam and clip_grad_norm_, written from the formulas."""
    params = {name: torch.nn.Parameter(init[name].clone()) for name in PARAM_NAMES}
    adam = torch.optim.Adam(params.values(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    w_enc, b_enc, w_dec, b_dec = (params[n] for n in PARAM_NAMES)
    decay_begin = train.decay_start * total_steps
    for t, x in enumerate(batches):
        x_s = x.to(F64) * scale
        pre = (x_s - b_dec) @ w_enc + b_enc
        if cfg.arch == "topk":
            values, indices = pre.topk(cfg.value("k"), dim=-1)
            f = torch.zeros_like(pre).scatter(-1, indices, values.relu())
        else:
            f = pre.relu()
        x_hat = f @ w_dec + b_dec
        loss = ((x_s - x_hat) ** 2).sum(-1).mean()
        if cfg.arch == "relu":
            lam = cfg.value("l1_coef") * min(1.0, (t + 1) / (train.relu.coef_warmup * total_steps))
            loss = loss + lam * (f * w_dec.norm(dim=1)).sum(-1).mean()
        adam.zero_grad()
        loss.backward()
        if cfg.arch == "topk":
            unit = (w_dec / w_dec.norm(dim=1, keepdim=True)).detach()
            assert w_dec.grad is not None
            w_dec.grad -= (w_dec.grad * unit).sum(1, keepdim=True) * unit
        torch.nn.utils.clip_grad_norm_(list(params.values()), train.grad_clip)
        warm = min(1.0, (t + 1) / train.warmup_steps)
        decay = 1.0 if t < decay_begin else (total_steps - t) / (total_steps - decay_begin)
        for group in adam.param_groups:
            group["lr"] = cfg.lr * min(warm, decay)
        adam.step()
        if cfg.arch == "topk":
            with torch.no_grad():
                w_dec /= w_dec.norm(dim=1, keepdim=True)
    return {name: p.detach() for name, p in params.items()}


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_bank_matches_a_plain_torch_reference(arch: str,
                                              data: tuple[np.ndarray, StreamStats]) -> None:
    x, stats = data
    train = with_arch_settings(TrainConfig(warmup_steps=3, decay_start=0.6, grad_clip=1.0),
                               coef_warmup=0.5)
    total = 10
    cfg = sae("s", arch, k=5, l1_coef=0.3, lr=3e-3, seed=7)
    bank = SAEBank([cfg], stats, train, total, dtype=F64)
    init = bank.sae_params("s")
    batches = batches_of(x, 128, total)
    clipped = 0
    for batch in batches:
        clipped += int(bank.step(batch)["grad_norm"][0] > train.grad_clip)
    assert clipped > 0  # the reference must also check clipping
    expected = reference_training(cfg, init, stats.scale, train, total, batches)
    for name in PARAM_NAMES:
        torch.testing.assert_close(bank.sae_params("s")[name], expected[name], rtol=0,
                                   atol=1e-10, msg=name)


def test_saes_in_a_bank_train_exactly_as_alone(data: tuple[np.ndarray, StreamStats]) -> None:
    x, stats = data
    train = with_arch_settings(TrainConfig(warmup_steps=2, decay_start=0.5, grad_clip=1.0),
                               coef_warmup=0.3)
    total = 10
    saes = [
        sae("topk-k4", "topk", k=4, lr=1e-3, seed=1),
        sae("relu-a", "relu", l1_coef=0.1, lr=2e-3, seed=2),
        sae("topk-k8", "topk", k=8, lr=3e-3, seed=3),
        sae("relu-b", "relu", l1_coef=1.0, lr=2e-3, seed=4),
        sae("topk-k2", "topk", k=2, lr=5e-3, seed=5),
        sae("topk-wide", "topk", d_sae=64, k=6, lr=1e-3, seed=6),  # a second topk sub-bank
    ]
    batches = batches_of(x, 96, total)
    bank = SAEBank(saes, stats, train, total, dtype=F64)
    metrics = [bank.step(b) for b in batches]
    assert bank.sae_ids == [s.sae_id for s in saes]
    for i, s in enumerate(saes):
        alone = SAEBank([s], stats, train, total, dtype=F64)
        alone_metrics = [alone.step(b) for b in batches]
        for name in PARAM_NAMES:
            torch.testing.assert_close(bank.sae_params(s.sae_id)[name],
                                       alone.sae_params(s.sae_id)[name], rtol=0, atol=1e-10,
                                       msg=f"{s.sae_id} {name}")
        for m_bank, m_alone in zip(metrics, alone_metrics, strict=True):
            for key in m_alone:
                assert m_bank[key][i] == pytest.approx(m_alone[key][0], rel=1e-10, abs=1e-12,
                                                         nan_ok=True)


def test_per_sae_gradient_clipping(data: tuple[np.ndarray, StreamStats]) -> None:
    """A huge gradient in one SAE leaves another SAE's update exactly as if it were alone."""
    x, stats = data
    train = with_arch_settings(TrainConfig(warmup_steps=0, decay_start=1.0, grad_clip=1.0),
                               coef_warmup=0.0)
    huge = sae("huge", "relu", l1_coef=1e9, lr=1e-3, seed=1)
    calm = sae("calm", "relu", l1_coef=0.01, lr=1e-3, seed=2)
    batches = batches_of(x, 64, 5)
    both = SAEBank([huge, calm], stats, train, 5, dtype=F64)
    alone = SAEBank([calm], stats, train, 5, dtype=F64)
    for batch in batches:
        norms = both.step(batch)["grad_norm"]
        alone.step(batch)
        # A bank-wide norm would scale calm's gradient by ~1e-9, below Adam's eps.
        assert norms[0] > 1e8 and norms[1] < 1e3
    for name in PARAM_NAMES:
        torch.testing.assert_close(both.sae_params("calm")[name], alone.sae_params("calm")[name],
                                   rtol=0, atol=1e-12, msg=name)


# --------------------------------------------------------------------------------------------
# Behaviour of trained SAEs
# --------------------------------------------------------------------------------------------


def test_topk_rows_have_at_most_k_latents_and_unit_decoder_rows(
        data: tuple[np.ndarray, StreamStats]) -> None:
    x, stats = data
    saes = [sae("k2", k=2, seed=1), sae("k5", k=5, seed=2), sae("k9", k=9, seed=3)]
    bank = SAEBank(saes, stats, TrainConfig(warmup_steps=1), 20)
    for batch in batches_of(x, 128, 20):
        metrics = bank.step(batch)
        assert np.all(metrics["l0"] <= np.array([2, 5, 9]))
    outputs = bank.encode_decode(torch.from_numpy(x[:256]))
    for s, (f, _) in zip(saes, outputs, strict=True):
        active = (f > 0).sum(dim=1)
        assert int(active.max()) <= s.value("k")
        # TopK keeps k, ReLU rarely drops one
        assert float(active.float().mean()) > s.value("k") - 1
        assert torch.all(f >= 0)
        norms = bank.decoder_norms()[s.sae_id]
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def fve(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Fraction of variance explained, summed row by row in float64."""
    x, x_hat = x.astype(np.float64), x_hat.astype(np.float64)
    mean = x.mean(axis=0)
    residual = sum(float(np.dot(r, r)) for r in x - x_hat)
    total = sum(float(np.dot(r, r)) for r in x - mean)
    return 1.0 - residual / total


def test_training_learns_a_sparse_dictionary() -> None:
    x, _ = sparse_dictionary_data(28_000, d_in=32, n_features=64, active=3, seed=5)
    train_x, held_out = x[:-2048], x[-2048:]
    stats = estimate_stream_stats(train_x[:2048])
    steps = 200
    train = with_arch_settings(TrainConfig(warmup_steps=10, decay_start=0.8, grad_clip=1.0),
                               coef_warmup=0.05)
    saes = [sae("topk", "topk", d_sae=128, k=4, lr=1e-2, seed=0),
            sae("relu", "relu", d_sae=128, l1_coef=1.0, lr=1e-2, seed=1)]
    bank = SAEBank(saes, stats, train, steps)
    first = bank.step(torch.from_numpy(train_x[:128]))
    for i in range(1, steps):
        last = bank.step(torch.from_numpy(train_x[i * 128:(i + 1) * 128]))
    # The relu loss gains its L1 term as lambda ramps up, so its reconstruction says more.
    assert np.all(last["loss"] < 0.6 * first["loss"])
    assert np.all(last["mse"] < 0.25 * first["mse"])
    outputs = bank.encode_decode(torch.from_numpy(held_out))
    for s, (f, x_hat) in zip(saes, outputs, strict=True):
        explained = fve(held_out, x_hat.numpy())
        assert explained > 0.5, (s.sae_id, explained)
        l0 = float((f > 0).float().sum(1).mean())
        assert l0 < 16, (s.sae_id, l0)  # sparse: well under d_in = 32


def test_encode_decode_returns_raw_units(data: tuple[np.ndarray, StreamStats]) -> None:
    x, stats = data
    cfg = sae("a", seed=3)
    bank = SAEBank([cfg], stats, TrainConfig(), 10, dtype=F64)
    bank.step(torch.from_numpy(x[:128]))
    ((f, x_hat),) = bank.encode_decode(torch.from_numpy(x[:64]))
    p = bank.sae_params("a")
    x_s = torch.from_numpy(x[:64]).to(F64) * stats.scale
    pre = (x_s - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    values, idx = pre.topk(cfg.value("k"), dim=-1)
    expected_f = torch.zeros_like(pre).scatter(-1, idx, values.relu())
    torch.testing.assert_close(f, expected_f)
    torch.testing.assert_close(x_hat, (expected_f @ p["W_dec"] + p["b_dec"]) / stats.scale)


def test_bf16_autocast_path_runs_and_tracks_float32(data: tuple[np.ndarray, StreamStats]) -> None:
    """The bf16 autocast path (train.bf16, on for CUDA), forced on here on the CPU: its rounding
    reaches the results, yet training follows the float32 run and the parameters stay float32."""
    x, stats = data
    saes = [sae("topk", "topk", k=4, seed=1), sae("relu", "relu", l1_coef=0.3, seed=2),
            SAEConfig(sae_id="jr", arch="jumprelu", d_sae=48, arch_keys={"l0_coef": 0.05},
                      lr=1e-3, seed=3)]
    train = with_arch_settings(TrainConfig(warmup_steps=1, bf16=True), init_threshold=0.3,
                               bandwidth=0.5)
    plain = SAEBank(saes, stats, train, 20)
    mixed = SAEBank(saes, stats, train, 20, autocast=True)
    assert not plain.autocast  # train.bf16 alone changes nothing on a CPU
    for batch in batches_of(x, 128, 20):
        m_plain, m_mixed = plain.step(batch), mixed.step(batch)
    assert np.all(m_plain["loss"] != m_mixed["loss"])  # bf16 matmuls ran
    np.testing.assert_allclose(m_mixed["mse"], m_plain["mse"], rtol=0.02)
    for s in saes:
        for name, value in mixed.sae_params(s.sae_id).items():
            assert value.dtype == torch.float32, name
    outputs = mixed.encode_decode(torch.from_numpy(x[:64]))
    assert all(f.dtype == x_hat.dtype == torch.float32 for f, x_hat in outputs)
