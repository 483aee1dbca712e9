"""Exported SAEs applied without the bank (`FrozenSAE`): every architecture gives the bank's own
inference latents and reconstructions on raw activations (input scale folded in)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.run_configs import with_arch_settings
from thresher.analysis.frozen import FrozenSAE, load_run_saes
from thresher.config import ARCHITECTURES, SAEConfig, TrainConfig
from thresher.config.saes import own_arch_keys
from thresher.stream.block import ActivationBlock
from thresher.stream.stats import estimate_stream_stats
from thresher.train.trainer import Trainer


def test_every_architecture_exports_what_the_bank_infers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(24, 12))
    x = ((rng.exponential(size=(768, 24)) * (rng.random((768, 24)) < 0.1)) @ basis
         * 3.0 + 1.0).astype(np.float32)  # far from unit scale: the folded scale matters
    keys = {"k": 4, "l1_coef": 0.1, "l0_coef": 0.05}
    saes = [SAEConfig(sae_id=f"{i}-{arch}", arch=arch, d_sae=32, lr=3e-3, seed=i,
                      arch_keys=own_arch_keys(arch, keys)) for i, arch in enumerate(ARCHITECTURES)]
    train = with_arch_settings(TrainConfig(batch_size=128, rows=128 * 6, warmup_steps=1),
                               init_threshold=0.05, bandwidth=0.1, fractions=(0.5,))
    trainer = Trainer("t0", saes, train, estimate_stream_stats(x[:256]), tmp_path)
    assert trainer.stats.scale != pytest.approx(1.0, rel=0.1)
    for step in range(6):
        rows = x[step * 128:(step + 1) * 128]
        trainer.train_step(ActivationBlock(acts=rows, example_id=np.arange(len(rows)),
                                           position=np.zeros(len(rows), dtype=np.int32)))
    trainer.export()

    frozen = {s.sae.sae_id: s for s in load_run_saes(tmp_path)}
    assert set(frozen) == {s.sae_id for s in saes}
    held_out = torch.from_numpy(x[-256:])
    for sae, (f_bank, x_hat_bank) in zip(saes, trainer.bank.encode_decode(held_out),
                                         strict=True):
        f, x_hat = frozen[sae.sae_id].encode_decode(held_out)
        assert (f_bank > 0).any(), sae.arch  # the comparison is not between two zero matrices
        # Same active set up to rounding at the threshold, same values and reconstructions.
        assert ((f > 0) != (f_bank > 0)).float().mean() < 1e-3, sae.arch
        np.testing.assert_allclose(f.numpy(), f_bank.numpy(), rtol=1e-4, atol=1e-3,
                                   err_msg=sae.arch)
        np.testing.assert_allclose(x_hat.numpy(), x_hat_bank.numpy(), rtol=1e-4, atol=1e-3,
                                   err_msg=sae.arch)
    with_threshold = {s.sae.arch for s in frozen.values() if "threshold" in s.weights}
    assert with_threshold == {"jumprelu", "batchtopk", "matryoshka"}


def test_an_export_without_thresher_record_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "saes" / "x"
    folder.mkdir(parents=True)
    from safetensors.numpy import save_file

    (folder / "cfg.json").write_text("{}")
    save_file({"W_enc": np.zeros((2, 3), dtype=np.float32)},
              str(folder / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match="thresher"):
        FrozenSAE.load(folder)
