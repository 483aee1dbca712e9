"""Errors before anything starts: `thresher plan` (and so the start of `thresher run`) refuses a
hook the model does not have and a bad store, in one line naming the file or key and the fix,
rather than letting the run fail inside a worker later."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

import thresher
from tests.run_configs import smoke_config
from tests.stored_data import HOOK, stored_config, write_shards
from tests.tiny_models import TINY_TL
from thresher.cli import main
from thresher.config import ConfigError
from thresher.modalities.stored.lmdb import StoreWriter
from thresher.stream.block import ActivationBlock


def _one_line_error(cfg: dict) -> str:
    with pytest.raises(ConfigError) as err:
        thresher.plan(cfg)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_layer_minilm_does_not_have(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path)
    cfg["source"]["hook"] = "layer.9"
    message = _one_line_error(cfg)
    assert "'layer.9'" in message and "6-layer" in message and "layer.5" in message
    cfg["source"]["hook"] = "layer.5"
    thresher.plan(cfg)  # the last layer is fine


def test_a_transformer_lens_block_past_the_last(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path)
    cfg["source"].update(backbone={"kind": "transformer_lens", "model": "", "config": TINY_TL},
                         hook="blocks.5.hook_resid_post")
    message = _one_line_error(cfg)
    assert "block 5" in message and "2 blocks" in message and "blocks.1" in message


def test_npy_shards_of_another_width_or_dtype(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", d=48, shards=3, rows=64)
    np.save(shards / "0001.npy", np.zeros((64, 64), dtype=np.float32))  # one odd shard
    message = _one_line_error(stored_config(tmp_path, shards))
    assert str(shards / "0001.npy") in message and "width 64" in message
    assert "rewrite or remove" in message
    np.save(shards / "0001.npy", np.zeros((64, 48), dtype=np.int64))
    message = _one_line_error(stored_config(tmp_path, shards))
    assert str(shards / "0001.npy") in message and "int64" in message and "float" in message


def test_a_truncated_lmdb_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "cache"
    writer = StoreWriter(store, backbone={"kind": "x"}, hook=HOOK, source={})
    rng = np.random.default_rng(0)
    for _ in range(4):
        writer.add(ActivationBlock(acts=rng.normal(size=(256, 32)).astype(np.float32),
                                   example_id=np.arange(256, dtype=np.int64),
                                   position=np.zeros(256, dtype=np.int32)))
    writer.close()
    data = store / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)
    cfg = stored_config(tmp_path, store)
    message = _one_line_error(cfg)
    assert str(store) in message and "truncated" in message and "harvest it again" in message
    # The command line: exit 2, one line on stderr, nothing started.
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["plan", str(path)]) == 2
    assert main(["run", "--inline", "--no-report", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("truncated" in line for line in err)
    assert not (tmp_path / "stored").exists()  # no run directory was created


def test_a_transformer_lens_hook_name_that_does_not_exist(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path)
    cfg["source"].update(backbone={"kind": "transformer_lens", "model": "", "config": TINY_TL},
                         hook="blocks.1.hook_resid")
    message = _one_line_error(cfg)
    assert "'blocks.1.hook_resid' is not a TransformerLens hook" in message
    assert "blocks.1.hook_resid_post" in message  # the closest names, as the fix
    cfg["source"]["hook"] = "blocks.0.attn.hook_pattern"
    assert "not one vector per token" in _one_line_error(cfg)
    cfg["source"].update(hook="blocks.0.hook_mlp_out",
                         backbone={"kind": "transformer_lens", "model": "",
                                   "config": {**TINY_TL, "attn_only": True}})
    assert "attn_only" in _one_line_error(cfg)


def test_windows_longer_than_the_model_takes(tmp_path: Path) -> None:
    cfg = smoke_config(tmp_path)
    cfg["source"]["inputs"]["context"] = 1024  # MiniLM takes 512 positions
    message = _one_line_error(cfg)
    assert "context is 1024" in message and "at most 512 tokens" in message
    cfg["source"].update(backbone={"kind": "transformer_lens", "model": "", "config": TINY_TL},
                         hook="blocks.0.hook_resid_post")
    assert "at most 256 tokens" in _one_line_error(cfg)


def test_the_hook_tables_match_transformer_lens() -> None:
    """tl_hooks knows every hook TransformerLens builds, across architectures, and a hook that
    needs a model option fires once the backbone has turned it on."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from thresher.modalities.text import tl_hooks

    variants = [{}, {"attn_only": True}, {"normalization_type": None},
                {"positional_embedding_type": "rotary", "gated_mlp": True, "act_fn": "silu",
                 "normalization_type": "RMS"}]
    block_hooks: set[str] = set()
    model_hooks: set[str] = set()
    for variant in variants:
        model = HookedTransformer(HookedTransformerConfig(**{**TINY_TL, **variant}))
        for hook in model.hook_dict:
            block = tl_hooks.block_of(hook)
            if block is None:
                model_hooks.add(hook)
            else:
                block_hooks.add(hook.split(".", 2)[2])
        if variant.get("attn_only"):
            assert not {h.split(".", 2)[2] for h in model.hook_dict
                        if h.startswith("blocks.")} & (tl_hooks.MLP_HOOKS - {"hook_mlp_in",
                                                                               "hook_mlp_out"})
    assert block_hooks == tl_hooks.BLOCK_HOOKS
    assert model_hooks <= tl_hooks.MODEL_HOOKS
    model = HookedTransformer(HookedTransformerConfig(**TINY_TL))
    hooks = tuple(f"blocks.1.{suffix}" for suffix in tl_hooks.OPTION_OF)
    tl_hooks.enable(model, hooks)
    _, cache = model.run_with_cache(torch.zeros(1, 3, dtype=torch.long))
    assert set(hooks) <= set(cache.keys())


def test_an_input_file_this_user_cannot_read(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("def f():\n    return 1\n")
    locked = texts / "b.txt"
    locked.write_text("def g():\n    return 2\n")
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads every file: answer as the operating system would a user
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked
                            and real_access(p, mode))
    cfg = smoke_config(tmp_path)
    cfg["source"]["inputs"] = {"kind": "text_files", "paths": [str(texts / "*.txt")],
                               "context": 32}
    message = _one_line_error(cfg)
    assert "source.inputs.paths.0" in message and f"cannot read {str(locked)!r}" in message
    assert "chmod a+r" in message
    locked.chmod(0o644)
    monkeypatch.undo()
    thresher.plan(cfg)
