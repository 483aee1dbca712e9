"""Round trip: thresher's export -> sae_lens.SAE.load_from_disk -> the same latents and
reconstructions, for every architecture (sae-lens is a test-only dependency)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.run_configs import with_arch_settings
from thresher.config import ARCHITECTURES, SAEConfig, TrainConfig
from thresher.config.saes import own_arch_keys
from thresher.stream.block import ActivationBlock
from thresher.stream.stats import estimate_stream_stats
from thresher.train.archs.registry import architecture_class
from thresher.train.trainer import Trainer

sae_lens = pytest.importorskip("sae_lens")
from sae_lens.registry import get_sae_class  # noqa: E402 (after the importorskip)

D_IN, BATCH = 24, 128


def acts(rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(7).normal(size=(60, D_IN))
    codes = rng.exponential(size=(rows, 60)) * (rng.random((rows, 60)) < 0.1)
    # a large offset and scale: the export must fold the input scale and the centre correctly
    return (codes @ basis * 20.0 + 50.0).astype(np.float32)


def test_every_arch_loads_in_saelens_with_the_same_outputs(tmp_path: Path) -> None:
    x = acts(BATCH * 8, seed=0)
    stats = estimate_stream_stats(x[:512])
    keys = {"k": 5, "l1_coef": 0.5, "l0_coef": 0.05}
    saes = [SAEConfig(sae_id=f"{i:02d}-{arch}", arch=arch, d_sae=64, lr=3e-3, seed=i,
                      arch_keys=own_arch_keys(arch, keys)) for i, arch in enumerate(ARCHITECTURES)]
    train = with_arch_settings(TrainConfig(batch_size=BATCH, rows=BATCH * 8, warmup_steps=2),
                               init_threshold=0.2, bandwidth=0.2)
    trainer = Trainer("t0", saes, train, stats, tmp_path, hook_name="blocks.0.hook_resid_post")
    for i in range(8):
        trainer.train_step(ActivationBlock(acts=x[i * BATCH:(i + 1) * BATCH],
                                           example_id=np.arange(BATCH, dtype=np.int64),
                                           position=np.zeros(BATCH, dtype=np.int32)))
    folders = trainer.export()
    held_out = torch.from_numpy(acts(300, seed=1))
    ours = trainer.bank.encode_decode(held_out)
    for sae, folder, (f, x_hat) in zip(saes, folders, ours, strict=True):
        loaded = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
        # SAELens's own class for the architecture the export names (relu: StandardSAE, the
        # BatchTopK family: JumpReLUSAE)
        expected = architecture_class(sae.arch).saelens_architecture
        assert type(loaded) is get_sae_class(expected)[0]
        assert type(loaded).__name__ != "SAE"
        assert loaded.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
        with torch.no_grad():
            f_lens = loaded.encode(held_out)
            x_hat_lens = loaded.decode(f_lens)
        active = (f > 0).float().sum(1).mean()
        assert 0 < float(active) < 64, sae.sae_id  # a meaningful, sparse code
        np.testing.assert_array_equal((f_lens > 0).numpy(), (f > 0).numpy())
        torch.testing.assert_close(f_lens, f, rtol=1e-4, atol=1e-4)
        scale = float(held_out.abs().max())
        torch.testing.assert_close(x_hat_lens, x_hat, rtol=1e-4, atol=1e-5 * scale)
        if sae.arch in ("batchtopk", "matryoshka"):
            # the inference threshold is a vector of one value, as SAELens writes BatchTopK
            threshold = loaded.threshold.detach()
            assert torch.all(threshold == threshold[0]) and float(threshold[0]) > 0
