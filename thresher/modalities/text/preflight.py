"""The text modality's checks before a run, from configs alone (no weights): hf_text hooks
(`layer.N`, `embeddings`) against the model's layer count, read from the local model folder or
built from `config`; TransformerLens `blocks.N.` hooks against a `config` model's n_layers."""

from __future__ import annotations

import json
import re
from pathlib import Path

from thresher.config import ConfigError, SourceConfig
from thresher.modalities.text.loading import hf_config, local_model_path


def preflight_text(source: SourceConfig, base_dir: Path) -> None:
    if source.backbone.kind == "hf_text":
        _check_hf_text_hooks(source)
    elif source.backbone.kind == "transformer_lens" and source.backbone.config is not None:
        _check_tl_hooks(source)


def hf_text_layers(source: SourceConfig) -> int:
    """The layer count of an hf_text backbone, from its config alone (no weights)."""
    backbone = source.backbone
    if backbone.config is not None:
        return int(hf_config(backbone).num_hidden_layers)
    path = Path(local_model_path(backbone.model)) / "config.json"
    if not path.is_file():  # a hub name: the backbone says whether it loads offline
        return -1
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
