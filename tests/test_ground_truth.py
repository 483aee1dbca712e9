"""Ground truth: activations built from a known random dictionary (256 true features in 128
dimensions, sparse Zipf-skewed firing); every architecture must recover the true directions,
scored by the mean correlation coefficient (MCC) under one-to-one Hungarian matching: at least
0.85, and no lower than sae_lens's own trainer reaches on the same batches and budget minus 0.02.

Sizes are chosen to run in tens of seconds on two CPU cores (the issue's example is 512 features
in 256 dims; the recovery problem is the same at half the size).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from thresher.config import SAEConfig, TrainConfig
from thresher.stream.stats import estimate_stream_stats
from thresher.train.sae import DECODER_INIT_NORM, SAEBank

N_FEATURES, D_IN = 256, 128
BATCH, STEPS = 512, 400
MEAN_L0 = 4
LR = 5e-3
# Per arch: thresher's sparsity hyperparameter (k for the TopK family; l1 / l0 coefficients).
SAES = [
    SAEConfig(sae_id="topk", arch="topk", d_sae=N_FEATURES, k=2 * MEAN_L0, l1=0, lr=LR, seed=1),
    SAEConfig(sae_id="batchtopk", arch="batchtopk", d_sae=N_FEATURES, k=2 * MEAN_L0, l1=0, lr=LR,
              seed=2),
    SAEConfig(sae_id="jumprelu", arch="jumprelu", d_sae=N_FEATURES, k=0, l1=0, l0=1.0, lr=LR,
              seed=3),
    SAEConfig(sae_id="relu", arch="relu", d_sae=N_FEATURES, k=0, l1=1.5, lr=LR, seed=4),
]
TRAIN = TrainConfig(batch_size=BATCH, tokens=BATCH * STEPS, warmup_steps=10, decay_start=0.8,
                    l1_warmup=0.05, dead_window=BATCH * 20, jumprelu_init_threshold=1.0,
                    jumprelu_bandwidth=1.0)
MIN_MCC = 0.85
SAELENS_MARGIN = 0.02


def ground_truth(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(activations [rows, D_IN], the true unit directions [N_FEATURES, D_IN])."""
    rng = np.random.default_rng(seed)
    dictionary = rng.normal(size=(N_FEATURES, D_IN))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    # Zipf-like firing: the commonest feature fires ~30x as often as the rarest.
    p = (np.arange(N_FEATURES) + 1.0) ** -0.6
    p *= MEAN_L0 / p.sum()
    fires = rng.random((rows, N_FEATURES)) < p
    magnitudes = rng.uniform(0.5, 1.5, size=(rows, N_FEATURES))
    return ((fires * magnitudes) @ dictionary).astype(np.float32), dictionary


def mcc(true_dirs: np.ndarray, learned: np.ndarray) -> float:
    """Mean |cosine| of the best one-to-one matching (Hungarian) of learned to true directions."""
    learned = learned / np.linalg.norm(learned, axis=1, keepdims=True)
    cos = np.abs(true_dirs @ learned.T)
    rows, cols = linear_sum_assignment(-cos)
    return float(cos[rows, cols].mean())


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Small matmuls: on a shared 2-core machine a second thread only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return ground_truth(BATCH * STEPS)


@pytest.fixture(scope="module")
def thresher_mcc(data: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    x, dictionary = data
    stats = estimate_stream_stats(x[:8192])
    bank = SAEBank(SAES, stats, TRAIN, STEPS)
    for i in range(STEPS):
        bank.step(torch.from_numpy(x[i * BATCH:(i + 1) * BATCH]))
    return {s.sae_id: mcc(dictionary, bank.sae_params(s.sae_id)["W_dec"].numpy()) for s in SAES}


def test_every_arch_recovers_the_true_features(thresher_mcc: dict[str, float]) -> None:
    assert set(thresher_mcc) == {"topk", "batchtopk", "jumprelu", "relu"}
    low = {arch: round(v, 3) for arch, v in thresher_mcc.items() if v < MIN_MCC}
    assert not low, f"MCC below {MIN_MCC}: {low} (all: {thresher_mcc})"


def test_a_random_dictionary_scores_far_lower(data: tuple[np.ndarray, np.ndarray]) -> None:
    """The MCC bar means something: random directions score well below it."""
    _, dictionary = data
    random = np.random.default_rng(5).normal(size=(N_FEATURES, D_IN))
    assert mcc(dictionary, random) < 0.5
    assert mcc(dictionary, dictionary[::-1].copy()) == pytest.approx(1.0)


def saelens_mcc(arch: str, x: np.ndarray, dictionary: np.ndarray) -> float:
    """The same data, batches, steps, lr schedule and sparsity settings through sae_lens."""
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        LoggingConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    # thresher starts every arch but relu with unit decoder rows; sae_lens's default 0.1 (the
    # April-2024 ReLU recipe) leaves its JumpReLU below the 1.0 threshold and dead (MCC ~0.26), a
    # reference too weak to compare with. So each side gets the same initial decoder norm.
    common = {"d_in": D_IN, "d_sae": N_FEATURES, "device": "cpu",
              "normalize_activations": "expected_average_only_in",
              "decoder_init_norm": DECODER_INIT_NORM.get(arch, 1.0)}
    sae_cfg = next(s for s in SAES if s.arch == arch)
    if arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=sae_cfg.k, **common))
    elif arch == "batchtopk":
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=sae_cfg.k, **common))
    elif arch == "jumprelu":
        sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
            l0_coefficient=sae_cfg.l0, jumprelu_init_threshold=TRAIN.jumprelu_init_threshold,
            jumprelu_bandwidth=TRAIN.jumprelu_bandwidth, **common))
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(
            l1_coefficient=sae_cfg.l1, l1_warm_up_steps=int(TRAIN.l1_warmup * STEPS), **common))
    norm_batches = 8

    def batches() -> Iterator[torch.Tensor]:
        for i in list(range(norm_batches)) + list(range(STEPS)):
            yield torch.from_numpy(x[i * BATCH:(i + 1) * BATCH])

    trainer_cfg = SAETrainerConfig(
        total_training_samples=BATCH * STEPS, train_batch_size_samples=BATCH, lr=LR,
        lr_warm_up_steps=TRAIN.warmup_steps,
        lr_decay_steps=int((1 - TRAIN.decay_start) * STEPS), lr_end=0.0,
        dead_feature_window=TRAIN.dead_window // BATCH, n_batches_for_norm_estimate=norm_batches,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1))
    SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=batches()).fit()
    return mcc(dictionary, sae.W_dec.detach().numpy())


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu"])
def test_no_worse_than_saelens_on_the_same_budget(arch: str, data: tuple[np.ndarray, np.ndarray],
                                                  thresher_mcc: dict[str, float]) -> None:
    pytest.importorskip("sae_lens")
    x, dictionary = data
    reference = saelens_mcc(arch, x, dictionary)
    assert thresher_mcc[arch] >= reference - SAELENS_MARGIN, (arch, thresher_mcc[arch],
                                                              reference)
