"""CE-loss and KL recovered equal SAELens's own evaluation (sae_lens.evals) on the same
TransformerLens model (random weights), the same SAE (thresher's export, loaded by sae_lens)
and the same tokens: every position zero-ablated, BOS positions masked out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tiny_models import TINY_TL
from thresher.analysis.frozen import FrozenSAE
from thresher.config import SAEConfig, TrainConfig, load_config
from thresher.modalities.text.splice import SplicedLM, splice_metrics
from thresher.stream.block import ActivationBlock
from thresher.stream.stats import estimate_stream_stats
from thresher.train.trainer import Trainer

sae_lens = pytest.importorskip("sae_lens")

HOOK = "blocks.0.hook_resid_post"
BOS, WINDOWS, CONTEXT, BATCH = 0, 24, 24, 128


class _Tokens:
    """What sae_lens's evaluation asks of an activation store: the next batch of tokens."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens, self.at = tokens, 0

    def get_batch_tokens(self, n: int) -> torch.Tensor:
        batch = self.tokens[self.at:self.at + n]
        self.at += n
        return batch


def _export_sae(lm: SplicedLM, tmp_path: Path) -> Path:
    """A TopK SAE trained briefly on the model's own activations at the hook, exported."""
    rng = np.random.default_rng(1)
    tokens = torch.from_numpy(rng.integers(1, 257, size=(64, CONTEXT)))
    with torch.no_grad():
        _, cache = lm.model.run_with_cache(tokens, names_filter=HOOK)
    x = cache[HOOK].reshape(-1, TINY_TL["d_model"]).numpy().astype(np.float32)
    sae = SAEConfig(sae_id="00-topk", arch="topk", d_sae=64, arch_keys={"k": 8}, lr=3e-3, seed=0)
    train = TrainConfig(batch_size=BATCH, rows=BATCH * 12, warmup_steps=2)
    trainer = Trainer("t0", [sae], train, estimate_stream_stats(x[:512]), tmp_path,
                      hook_name=HOOK)
    for i in range(12):
        rows = x[(i * BATCH) % (len(x) - BATCH):][:BATCH]
        trainer.train_step(ActivationBlock(acts=rows, example_id=np.arange(BATCH),
                                           position=np.zeros(BATCH, dtype=np.int32)))
    (folder,) = trainer.export()
    return Path(folder)


def test_ce_and_kl_recovered_equal_saelens(tmp_path: Path) -> None:
    from sae_lens.evals import get_downstream_reconstruction_metrics
    from sae_lens.training.activation_scaler import ActivationScaler

    source = load_config({"source": {"backbone": {"kind": "transformer_lens",
                                                  "config": TINY_TL},
                                     "hook": HOOK}}).source
    lm = SplicedLM(source)
    folder = _export_sae(lm, tmp_path)
    rng = np.random.default_rng(0)
    tokens = torch.from_numpy(rng.integers(1, 257, size=(WINDOWS, CONTEXT)))
    tokens[:, 0] = BOS
    ours = splice_metrics(lm, [t.numpy() for t in tokens],
                          {"sae": lambda x: FrozenSAE.load(folder).encode_decode(x)[1]},
                          pad_id=BOS, n_prefix=1, n_suffix=0, batch_size=7)["sae"]

    sae = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
    with torch.no_grad():
        ref = get_downstream_reconstruction_metrics(
            sae, lm.model, _Tokens(tokens), ActivationScaler(), compute_kl=True,
            compute_ce_loss=True, n_batches=3, eval_batch_size_prompts=WINDOWS // 3,
            ignore_tokens=[BOS])
    # A partial reconstruction (a random model may even gain from it): the numbers can differ.
    assert abs(ref["ce_loss_score"] - 1) > 1e-3 and ref["kl_div_with_sae"] > 1e-3
    pairs = {"ce_loss_clean": "ce_loss_without_sae", "ce_loss_sae": "ce_loss_with_sae",
             "ce_loss_zero": "ce_loss_with_ablation", "ce_loss_recovered": "ce_loss_score",
             "kl_div": "kl_div_with_sae", "kl_div_zero": "kl_div_with_ablation",
             "kl_recovered": "kl_div_score"}
    worst = max(abs(getattr(ours, n) - ref[t]) for n, t in pairs.items())
    print(f"largest |thresher - sae_lens| over CE/KL: {worst:.2e}")
    for name, theirs in pairs.items():
        assert getattr(ours, name) == pytest.approx(ref[theirs], abs=1e-4), (name, theirs)
    # The content-only baseline is a different ablation: kept, under its own name.
    assert abs(ours.ce_loss_zero_content - ours.ce_loss_zero) > 1e-3
