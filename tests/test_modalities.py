"""The modality registry and the contract every modality keeps (thresher/modalities/)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import numpy as np
import pytest

from thresher.config import MODALITY_KINDS, BackboneConfig, SourceConfig, load_config
from thresher.harvest.harvester import Harvester
from thresher.harvest.inputs import prepare_inputs
from thresher.modalities.contract import InputBatch
from thresher.modalities.registry import MODALITIES, modality_of

# A random-weight TransformerLens model (byte tokenizer) and a small synthetic source.
TL = {"kind": "transformer_lens", "model": "",
      "config": {"n_layers": 1, "d_model": 16, "n_ctx": 32, "d_head": 8, "n_heads": 2,
                 "d_mlp": 32, "d_vocab": 300, "act_fn": "gelu"}}
SYNTHETIC = {"kind": "synthetic", "model": "",
             "config": {"n_features": 32, "d_in": 8, "rows": 300, "block_rows": 100}}


def test_every_backbone_kind_belongs_to_exactly_one_modality() -> None:
    kinds = typing.get_args(typing.get_type_hints(BackboneConfig)["kind"])
    served = [kind for modality in MODALITIES for kind in modality.backbone_kinds]
    assert sorted(served) == sorted(kinds)  # none missing, none twice
    # the registry and the config's declaration (what load_config checks) name the same ones
    assert {m.name: m.backbone_kinds for m in MODALITIES} == {
        name: kinds.backbones for name, kinds in MODALITY_KINDS.items()}
    for modality in MODALITIES:
        for kind in modality.backbone_kinds:
            assert modality_of(SourceConfig(backbone=BackboneConfig(kind=kind))) is modality


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
def test_a_batch_harvested_from_its_columns_gives_the_same_rows(
        backbone: dict, hook: str, inputs: dict) -> None:
    """What a Ray worker does (rebuild the typed batch from columns) gives the rows of the
    batch itself: the columns carry everything the backbone reads."""
    source = load_config({"source": {"backbone": backbone, "hook": hook, "batch_size": 4,
                                     "inputs": inputs}}).source
    prepared = prepare_inputs(source, 0, Path("."))
    harvester = Harvester(source)
    batch = prepared.batches[0]
    assert isinstance(batch, harvester.batch_type)
    columns = {**batch.to_columns(), "batch_index": np.int64(0)}  # an extra column is left
    again = harvester.batch_type.from_columns(columns)
    want, got = harvester.harvest(batch), harvester.harvest(again)
    assert len(want) > 0
    np.testing.assert_array_equal(want.acts, got.acts)
    np.testing.assert_array_equal(want.example_id, got.example_id)
    np.testing.assert_array_equal(want.position, got.position)
    assert harvester.forward_calls == 2
