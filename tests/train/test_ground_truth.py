"""Ground truth: every architecture recovers the true directions of a flat synthetic source
(modalities/synthetic/model.py: Zipfian firing, no hierarchy), scored by the mean correlation
coefficient (MCC) of each true feature's best one-to-one (Hungarian) match among the latents:
at least 0.85, and no lower than sae_lens's own trainer reaches on the same batches and budget
minus 0.02.

The comparison is of training rules, not of initial draws: each sae_lens SAE starts from the
initial W_enc and W_dec of the thresher SAE of the same seed, and each side is the mean over
three seeds. The dictionary is overcomplete (d_sae = 2 x 128 true features), as SAEs are used.
Sizes: 128 true features in 64 dimensions, 400 steps of 512 rows. The measurements behind these
choices (seed spread, Matryoshka at d_sae = 128, its free decoder rows) are in docs/design.md,
Decisions.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from tests.run_configs import with_arch_settings
from thresher.analysis.ground_truth import mcc
from thresher.config import SAEConfig, TrainConfig, load_config
from thresher.modalities.contract import BlockIndexBatch
from thresher.modalities.synthetic.source import SyntheticBackbone
from thresher.stream.block import ActivationBlock
from thresher.stream.stats import StreamStats, estimate_stream_stats
from thresher.train.archs.matryoshka import matryoshka_widths
from thresher.train.bank import SAEBank, init_sae_params

pytestmark = pytest.mark.slow  # long end-to-end runs: the full suite only

N_FEATURES, D_IN = 128, 64
D_SAE = 2 * N_FEATURES  # overcomplete: spare latents, as SAEs are used
BATCH, STEPS = 512, 400
MEAN_L0 = 3
LR = 5e-3
SOURCE = {"backbone": {"kind": "synthetic", "n_features": N_FEATURES, "d_in": D_IN,
                       "mean_l0": MEAN_L0, "zipf_exponent": 0.6, "block_rows": BATCH * 20,
                       "rows": BATCH * STEPS, "seed": 0},
          "hook": "synthetic"}
SEEDS = (0, 1, 2)  # each arch trained with each; its MCC is the mean over them
# Per arch: thresher's sparsity hyperparameter (k for the TopK family; l1 / l0 coefficients).
ARCH_SAES = [
    SAEConfig(sae_id="topk", arch="topk", d_sae=D_SAE, arch_keys={"k": 2 * MEAN_L0}, lr=LR,
              seed=1),
    SAEConfig(sae_id="batchtopk", arch="batchtopk", d_sae=D_SAE, arch_keys={"k": 2 * MEAN_L0},
              lr=LR, seed=2),
    SAEConfig(sae_id="matryoshka", arch="matryoshka", d_sae=D_SAE,
              arch_keys={"k": 2 * MEAN_L0}, lr=LR, seed=5),
    SAEConfig(sae_id="jumprelu", arch="jumprelu", d_sae=D_SAE, arch_keys={"l0_coef": 1.0},
              lr=LR, seed=3),
    SAEConfig(sae_id="relu", arch="relu", d_sae=D_SAE, arch_keys={"l1_coef": 1.5}, lr=LR,
              seed=4),
]
SAES = [dataclasses.replace(sae, sae_id=f"{sae.arch}-{i}", seed=sae.seed + 10 * i)
        for sae in ARCH_SAES for i in SEEDS]
TRAIN = with_arch_settings(TrainConfig(batch_size=BATCH, rows=BATCH * STEPS, warmup_steps=10,
                                       decay_start=0.8, dead_window=BATCH * 20),
                           coef_warmup=0.05, init_threshold=1.0, bandwidth=1.0)
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
def stats(data: tuple[np.ndarray, np.ndarray]) -> StreamStats:
    return estimate_stream_stats(data[0][:8192])


@pytest.fixture(scope="module")
def thresher_mcc(data: tuple[np.ndarray, np.ndarray], stats: StreamStats
                 ) -> dict[str, list[float]]:
    """Per arch, the MCC of each seed's SAE (one bank trains them all on the same batches)."""
    x, dictionary = data
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
    low = {arch: v for arch, v in mean.items() if v < MIN_MCC}
    assert not low, f"mean MCC below {MIN_MCC}: {low} (all: {mean})"


def test_a_random_dictionary_scores_far_lower(data: tuple[np.ndarray, np.ndarray]) -> None:
    """The MCC bar means something: random directions score well below it."""
    _, dictionary = data
    random = np.random.default_rng(5).normal(size=(N_FEATURES, D_IN))
    assert mcc(dictionary, random) < 0.5
    assert mcc(dictionary, dictionary[::-1].copy()) == pytest.approx(1.0)


def saelens_mcc(sae_cfg: SAEConfig, x: np.ndarray, dictionary: np.ndarray,
                stats: StreamStats) -> float:
    """The same data, batches, steps, lr schedule, sparsity settings and initial W_enc, W_dec
    through sae_lens."""
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

    arch = sae_cfg.arch
    torch.manual_seed(sae_cfg.seed)
    common = {"d_in": D_IN, "d_sae": D_SAE, "device": "cpu",
              "normalize_activations": "expected_average_only_in"}
    if arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=sae_cfg.value("k"), **common))
    elif arch == "batchtopk":
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=sae_cfg.value("k"), **common))
    elif arch == "matryoshka":
        widths = list(matryoshka_widths(D_SAE, TRAIN.matryoshka.fractions))
        sae = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
            k=sae_cfg.value("k"), matryoshka_widths=widths, **common))
    elif arch == "jumprelu":
        sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
            l0_coefficient=sae_cfg.value("l0_coef"),
            jumprelu_init_threshold=TRAIN.jumprelu.init_threshold,
            jumprelu_bandwidth=TRAIN.jumprelu.bandwidth, **common))
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(
            l1_coefficient=sae_cfg.value("l1_coef"),
            l1_warm_up_steps=int(TRAIN.relu.coef_warmup * STEPS), **common))
    # thresher's initial decoder and encoder (unit rows but for relu's 0.1, W_enc = W_dec^T);
    # b_enc and b_dec stay sae_lens's zeros (thresher's b_dec starts at the stream's median: the
    # same MCC either way).
    init = init_sae_params(sae_cfg, stats, TRAIN)
    with torch.no_grad():
        sae.W_dec.copy_(init["W_dec"])
        sae.W_enc.copy_(init["W_enc"])
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


@pytest.mark.parametrize("arch", [
    "topk", "batchtopk", "jumprelu", "relu",
    "matryoshka"])
def test_no_worse_than_saelens_on_the_same_budget(
        arch: str, data: tuple[np.ndarray, np.ndarray], stats: StreamStats,
        thresher_mcc: dict[str, list[float]]) -> None:
    pytest.importorskip("sae_lens")
    x, dictionary = data
    reference = [saelens_mcc(sae, x, dictionary, stats) for sae in SAES if sae.arch == arch]
    ours = statistics.mean(thresher_mcc[arch])
    assert ours >= statistics.mean(reference) - SAELENS_MARGIN, (arch, thresher_mcc[arch],
                                                                  reference)
