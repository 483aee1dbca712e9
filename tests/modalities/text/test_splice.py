"""CE-loss recovered through the splice itself: identity gives 1, zeroing the content gives 0
against the content-only baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tiny_models import TINY_GPT2, TINY_TL
from thresher.config import load_config
from thresher.modalities.text.splice import SplicedLM, splice_metrics, splice_supported


@pytest.mark.parametrize(("backbone", "hook"), [
    ({"kind": "transformer_lens", "config": TINY_TL}, "blocks.0.hook_resid_post"),
    ({"kind": "hf_text", "config": TINY_GPT2}, "layer.0"),
])
def test_identity_recovers_one_and_zero_recovers_zero(backbone: dict, hook: str) -> None:
    source = load_config({"source": {"backbone": backbone, "hook": hook}}).source
    assert splice_supported(source) is None
    lm = SplicedLM(source)
    rng = np.random.default_rng(0)
    windows = [np.concatenate([[0], rng.integers(1, 257, size=n)]) for n in (20, 12, 17, 5)]
    metrics = splice_metrics(lm, windows, {"identity": lambda x: x, "zero": torch.zeros_like,
                                           "half": lambda x: 0.5 * x},
                             pad_id=0, n_prefix=1, n_suffix=0, batch_size=3)
    identity, zero, half = metrics["identity"], metrics["zero"], metrics["half"]
    assert identity.ce_loss_zero != pytest.approx(identity.ce_loss_clean, abs=1e-3)
    assert identity.ce_loss_recovered == pytest.approx(1.0, abs=1e-5)
    assert identity.kl_div == pytest.approx(0.0, abs=1e-6)
    # Zeroing the content positions is the `_content` baseline; the SAELens baseline zeroes
    # every position (BOS too), so it lies elsewhere.
    assert zero.ce_loss_recovered_content == pytest.approx(0.0, abs=1e-6)
    assert zero.kl_recovered_content == pytest.approx(0.0, abs=1e-6)
    assert zero.ce_loss_zero != pytest.approx(zero.ce_loss_zero_content, abs=1e-4)
    assert identity.kl_recovered == pytest.approx(1.0, abs=1e-5)
    assert half.ce_loss_sae != pytest.approx(identity.ce_loss_sae, abs=1e-5)  # splice bites


def test_encoder_without_lm_head_is_refused_with_reason() -> None:
    source = load_config({"source": {"backbone": {"kind": "hf_text", "model": "minilm"},
                                     "hook": "layer.3"}}).source
    reason = splice_supported(source)
    assert reason is not None and "encoder" in reason


def test_an_unreadable_model_config_is_refused_with_its_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    source = load_config({"source": {"backbone": {"kind": "hf_text", "model": str(tmp_path)},
                                     "hook": "layer.0"}}).source
    reason = splice_supported(source)
    assert reason is not None and reason.startswith("cannot read the model config (")
    assert "JSON" in reason or "json" in reason  # the error's own words, not only its class
    synthetic = load_config({"source": {"backbone": {"kind": "synthetic"},
                                        "hook": "synthetic"}}).source
    assert splice_supported(synthetic) == "synthetic is not a language model"
