"""Ground truth: every architecture recovers the true directions of a flat synthetic source
(modalities/synthetic/model.py: Zipfian firing, no hierarchy), scored by the mean correlation
coefficient (MCC) under one-to-one Hungarian matching: at least 0.85, and no lower than
sae_lens's own trainer reaches on the same batches and budget minus 0.02.

Each side is the mean over three seeds: one seed's MCC moves by about 0.02 with the seed on this
source (sae_lens's BatchTopK: 0.926, 0.904, 0.905), as much as the margin compared.

Sizes: 128 true features in 64 dimensions, 400 steps of 512 rows (about a minute for thresher's
15 SAEs, five seconds per sae_lens SAE, on two CPU cores). Two results are open and marked
xfail with their numbers: Matryoshka's MCC, and BatchTopK's margin to sae_lens (0.024 over
three seeds). Ruled out as its cause: gradient clipping (off: lower), the AuxK coefficient
(sae_lens's 1.0: the same), b_dec's initial value (zero: the same). Still to try: sae_lens trains
the TopK family with a free-norm decoder (rescale_acts_by_decoder_norm), thresher with unit-norm
decoder rows (gradient projected, rows renormalised).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from thresher.analysis.ground_truth import mcc
from thresher.config import SAEConfig, TrainConfig, load_config
from thresher.modalities.contract import BlockIndexBatch
from thresher.modalities.synthetic.source import SyntheticBackbone
from thresher.stream.block import ActivationBlock
from thresher.stream.stats import estimate_stream_stats
from thresher.train.archs.matryoshka import matryoshka_widths
from thresher.train.archs.registry import architecture_class
from thresher.train.bank import SAEBank

pytestmark = pytest.mark.slow  # long end-to-end runs: the full suite only

N_FEATURES, D_IN = 128, 64
BATCH, STEPS = 512, 400
MEAN_L0 = 3
LR = 5e-3
SOURCE = {"backbone": {"kind": "synthetic", "config": {
    "n_features": N_FEATURES, "d_in": D_IN, "mean_l0": MEAN_L0, "zipf_exponent": 0.6,
    "block_rows": BATCH * 20, "rows": BATCH * STEPS, "seed": 0}}, "hook": "synthetic"}
SEEDS = (0, 1, 2)  # each arch trained with each; its MCC is the mean over them
# Per arch: thresher's sparsity hyperparameter (k for the TopK family; l1 / l0 coefficients).
ARCH_SAES = [
    SAEConfig(sae_id="topk", arch="topk", d_sae=N_FEATURES, k=2 * MEAN_L0, l1_coef=0, lr=LR,
              seed=1),
    SAEConfig(sae_id="batchtopk", arch="batchtopk", d_sae=N_FEATURES, k=2 * MEAN_L0, l1_coef=0,
              lr=LR, seed=2),
    SAEConfig(sae_id="matryoshka", arch="matryoshka", d_sae=N_FEATURES, k=2 * MEAN_L0, l1_coef=0,
              lr=LR, seed=5),
    SAEConfig(sae_id="jumprelu", arch="jumprelu", d_sae=N_FEATURES, k=0, l1_coef=0, l0_coef=1.0,
              lr=LR, seed=3),
    SAEConfig(sae_id="relu", arch="relu", d_sae=N_FEATURES, k=0, l1_coef=1.5, lr=LR, seed=4),
]
SAES = [dataclasses.replace(sae, sae_id=f"{sae.arch}-{i}", seed=sae.seed + 10 * i)
        for sae in ARCH_SAES for i in SEEDS]
TRAIN = TrainConfig(batch_size=BATCH, rows=BATCH * STEPS, warmup_steps=10, decay_start=0.8,
                    dead_window=BATCH * 20).with_arch_settings(coef_warmup=0.05,
                                                               init_threshold=1.0, bandwidth=1.0)
MIN_MCC = 0.85
SAELENS_MARGIN = 0.02


def ground_truth() -> tuple[np.ndarray, np.ndarray]:
    """(activations [rows, D_IN] as the synthetic source harvests them, the true directions)."""
    source = load_config({"source": SOURCE}).source
    backbone = SyntheticBackbone(source)
    blocks = [backbone.harvest(BlockIndexBatch.of(i)) for i in range(backbone.model.n_blocks)]
    return ActivationBlock.concat(blocks).acts, backbone.model.dictionary


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Small matmuls: on a shared 2-core machine a second thread only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return ground_truth()


@pytest.fixture(scope="module")
def thresher_mcc(data: tuple[np.ndarray, np.ndarray]) -> dict[str, list[float]]:
    """Per arch, the MCC of each seed's SAE (one bank trains them all on the same batches)."""
    x, dictionary = data
    stats = estimate_stream_stats(x[:8192])
    bank = SAEBank(SAES, stats, TRAIN, STEPS)
    for i in range(STEPS):
        bank.step(torch.from_numpy(x[i * BATCH:(i + 1) * BATCH]))
    out: dict[str, list[float]] = {}
    for sae in SAES:
        out.setdefault(sae.arch, []).append(
            mcc(dictionary, bank.sae_params(sae.sae_id)["W_dec"].numpy()))
    return out


def test_every_arch_recovers_the_true_features(thresher_mcc: dict[str, list[float]]) -> None:
    assert set(thresher_mcc) == {s.arch for s in ARCH_SAES}
    assert all(len(values) == len(SEEDS) for values in thresher_mcc.values())
    mean = {arch: round(statistics.mean(v), 3) for arch, v in thresher_mcc.items()}
    low = {arch: v for arch, v in mean.items() if v < MIN_MCC and arch != "matryoshka"}
    assert not low, f"mean MCC below {MIN_MCC}: {low} (all: {mean})"


@pytest.mark.xfail(strict=True, reason="open: on this flat source thresher's Matryoshka (widths "
                   "8/32/128 of 128 latents) reaches a mean MCC of 0.763 (0.752, 0.769, "
                   "0.768), sae_lens's 0.807 (0.806, 0.807, 0.809): both below 0.85 at this "
                   "budget, thresher 0.04 below")
def test_matryoshka_recovers_the_true_features(thresher_mcc: dict[str, list[float]]) -> None:
    assert statistics.mean(thresher_mcc["matryoshka"]) >= MIN_MCC


def test_a_random_dictionary_scores_far_lower(data: tuple[np.ndarray, np.ndarray]) -> None:
    """The MCC bar means something: random directions score well below it."""
    _, dictionary = data
    random = np.random.default_rng(5).normal(size=(N_FEATURES, D_IN))
    assert mcc(dictionary, random) < 0.5
    assert mcc(dictionary, dictionary[::-1].copy()) == pytest.approx(1.0)


def saelens_mcc(arch: str, x: np.ndarray, dictionary: np.ndarray, seed: int = 0) -> float:
    """The same data, batches, steps, lr schedule and sparsity settings through sae_lens."""
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        LoggingConfig,
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(seed)
    # thresher starts every arch but relu with unit decoder rows; sae_lens's default 0.1 (the
    # April-2024 ReLU recipe) leaves its JumpReLU below the 1.0 threshold and dead (MCC ~0.26), a
    # reference too weak to compare with. So each side gets the same initial decoder norm.
    common = {"d_in": D_IN, "d_sae": N_FEATURES, "device": "cpu",
              "normalize_activations": "expected_average_only_in",
              "decoder_init_norm": architecture_class(arch).decoder_init_norm}
    sae_cfg = next(s for s in ARCH_SAES if s.arch == arch)
    if arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=sae_cfg.k, **common))
    elif arch == "batchtopk":
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=sae_cfg.k, **common))
    elif arch == "matryoshka":
        widths = list(matryoshka_widths(N_FEATURES, TRAIN.matryoshka.fractions))
        sae = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
            k=sae_cfg.k, matryoshka_widths=widths, **common))
    elif arch == "jumprelu":
        sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
            l0_coefficient=sae_cfg.l0_coef, jumprelu_init_threshold=TRAIN.jumprelu.init_threshold,
            jumprelu_bandwidth=TRAIN.jumprelu.bandwidth, **common))
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(
            l1_coefficient=sae_cfg.l1_coef, l1_warm_up_steps=int(TRAIN.relu.coef_warmup * STEPS),
            **common))
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


# Matryoshka's reference costs a minute of sae_lens training per seed here; its numbers are in
# the xfail above.
@pytest.mark.parametrize("arch", [
    "topk",
    pytest.param("batchtopk", marks=pytest.mark.xfail(
        strict=True, reason="open: thresher's mean MCC 0.888 (0.897, 0.882, 0.884) against "
        "sae_lens's 0.911 (0.926, 0.904, 0.905) on this source: 0.024 below, margin 0.02")),
    "jumprelu", "relu"])
def test_no_worse_than_saelens_on_the_same_budget(
        arch: str, data: tuple[np.ndarray, np.ndarray],
        thresher_mcc: dict[str, list[float]]) -> None:
    pytest.importorskip("sae_lens")
    x, dictionary = data
    reference = [saelens_mcc(arch, x, dictionary, seed) for seed in SEEDS]
    ours = statistics.mean(thresher_mcc[arch])
    assert ours >= statistics.mean(reference) - SAELENS_MARGIN, (arch, thresher_mcc[arch],
                                                                  reference)
