"""Checks that are cheap, run by `thresher plan` and at the start of `thresher run`, before Ray
or any backbone starts: a bad hook or a bad store is one ConfigError line naming the file or
key and the fix, not a worker traceback a minute later.

- hf_text hooks (`layer.N`, `embeddings`) against the model's config (its layer count), read
  from the local model folder or built from `config` without weights;
- TransformerLens `blocks.N.` hooks against a `config` model's layer count;
- a `stored` source's store opened and checked: an LMDB cache's header, completeness and file
  size; every .npy shard's header (2-D, float dtype, one width for all); a shard cache's
  manifest; and that the hooks asked for are in it.
"""

from __future__ import annotations

import re
from pathlib import Path

from thresher.config import ConfigError, Plan, SourceConfig, config_dir


def preflight(plan: Plan) -> None:
    base = config_dir(plan.config)
    for stream in plan.streams:
        source = stream.source
        if source.backbone.kind == "stored":
            _check_store(source, base)
        elif source.backbone.kind == "hf_text":
            _check_hf_text_hooks(source)
        elif source.backbone.kind == "transformer_lens" and source.backbone.config is not None:
            _check_tl_hooks(source)


def _check_store(source: SourceConfig, base: Path) -> None:
    from thresher.harvest.cache import check_stored_hook, open_store, store_path

    store = open_store(store_path(source, base))  # header, size and shard checks
    try:
        check_stored_hook(source, store)
    finally:
        store.close()


def hf_text_layers(source: SourceConfig) -> int:
    """The layer count of an hf_text backbone, from its config alone (no weights)."""
    from thresher.harvest.backbones import _hf_config, _local_model_path

    backbone = source.backbone
    if backbone.config is not None:
        return int(_hf_config(backbone).num_hidden_layers)
    path = Path(_local_model_path(backbone.model)) / "config.json"
    if not path.is_file():  # a hub name: the backbone says whether it loads offline
        return -1
    import json

    config = json.loads(path.read_text())
    return int(config.get("num_hidden_layers", -1))


def _check_hf_text_hooks(source: SourceConfig) -> None:
    n_layers = hf_text_layers(source)
    if n_layers < 0:
        return
    valid = ["embeddings"] + [f"layer.{i}" for i in range(n_layers)]
    for hook in source.hooks:
        if hook not in valid:
            raise ConfigError(
                f"source.hook {hook!r} is not a hook of the {n_layers}-layer hf_text model "
                f"{source.backbone.model or '(config)'}; set it to one of: "
                f"{', '.join(valid[:3])}, ..., {valid[-1]}")


def _check_tl_hooks(source: SourceConfig) -> None:
    config = source.backbone.config or {}
    n_layers = int(config.get("n_layers", -1))
    if n_layers < 0:
        return
    for hook in source.hooks:
        match = re.match(r"blocks\.(\d+)\.", hook)
        if match is not None and int(match.group(1)) >= n_layers:
            raise ConfigError(
                f"source.hook {hook!r} names block {match.group(1)} but the model has "
                f"{n_layers} blocks (n_layers); use blocks.0 ... blocks.{n_layers - 1}")
