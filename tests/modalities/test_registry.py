"""The modality registry and the contract every modality keeps (thresher/modalities/)."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import numpy as np
import pytest

from thresher.config import ConfigError, backbone_kinds, load_config, modality_specs
from thresher.harvest.harvester import Harvester
from thresher.harvest.inputs import prepare_inputs
from thresher.modalities.contract import InputBatch, kind_code
from thresher.modalities.registry import MODALITIES, modality_of

# A random-weight TransformerLens model (byte tokenizer) and a small synthetic source.
TL = {"kind": "transformer_lens", "model": "",
      "config": {"n_layers": 1, "d_model": 16, "n_ctx": 32, "d_head": 8, "n_heads": 2,
                 "d_mlp": 32, "d_vocab": 300, "act_fn": "gelu"}}
SYNTHETIC = {"kind": "synthetic", "n_features": 32, "d_in": 8, "rows": 300, "block_rows": 100}


def test_each_modality_spec_has_its_registered_modality_and_kind_code() -> None:
    assert sorted(modality_specs()) == sorted(m.name for m in MODALITIES)
    for settings in backbone_kinds().values():
        module, _, name = settings.implementation.partition(":")
        kind = getattr(importlib.import_module(module), name)
        assert callable(getattr(kind, "load", None)), settings.implementation


def test_a_backbone_mapping_is_built_by_its_kind() -> None:
    cfg = load_config({"source": {"backbone": SYNTHETIC, "hook": "synthetic"}})
    backbone = cfg.source.backbone
    assert type(backbone) is backbone_kinds()["synthetic"] and backbone.n_features == 32
    assert modality_of(cfg.source).name == "synthetic"
    assert type(kind_code(backbone)).__name__ == "Synthetic"
    again = load_config(cfg.to_dict())  # run.json's form reads back as the same settings
    assert again.source.backbone == backbone
    with pytest.raises(ConfigError, match=r"`source.backbone.kind` is 'open_clp'; did you mean "
                                          r"'open_clip'\? Valid choices: .*'hf_vision'"):
        load_config({"source": {"backbone": {"kind": "open_clp"}}})
    with pytest.raises(ConfigError, match=r"unknown key `source.backbone.checkpoint`.* Valid "
                                          r"keys here: model, config, dtype, device$"):
        load_config({"source": {"backbone": {"kind": "hf_text", "checkpoint": "a.pt"}}})


def test_each_modality_harvests_its_own_batch_type() -> None:
    for modality in MODALITIES:
        assert issubclass(modality.batch_type, InputBatch)
        assert dataclasses.fields(modality.batch_type)  # columns to cross processes with
    assert len({m.name for m in MODALITIES}) == len(MODALITIES)


@pytest.mark.parametrize(("backbone", "hook", "inputs"), [
    (TL, "blocks.0.hook_resid_post", {"kind": "python_docstrings", "context": 16,
                                      "max_tokens": 400}),
    (SYNTHETIC, "synthetic", {}),
])
def test_a_batch_harvests_the_same_rows_twice(backbone: dict, hook: str, inputs: dict) -> None:
    """A backbone's harvest is a function of the batch: the same rows for the same batch."""
    source = load_config({"source": {"backbone": backbone, "hook": hook, "batch_size": 4,
                                     "inputs": inputs}}).source
    prepared = prepare_inputs(source, 0, Path("."))
    harvester = Harvester(source)
    batch = prepared.batches[0]
    assert isinstance(batch, harvester.batch_type)
    want, got = harvester.harvest(batch), harvester.harvest(batch)
    assert len(want) > 0
    np.testing.assert_array_equal(want.acts, got.acts)
    np.testing.assert_array_equal(want.example_id, got.example_id)
    np.testing.assert_array_equal(want.position, got.position)
    assert harvester.forward_calls == 2
