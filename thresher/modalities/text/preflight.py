"""The text modality's checks before a run, from configs alone (no weights, no import of a
model library): hf_text hooks (`layer.N`, `embeddings`) against the model's layer count, read
from the local model folder or built from `config`; TransformerLens hooks against the names it
has (tl_hooks.py) and a `config` model's n_layers; and the windows against the longest input
the model takes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from thresher.config import ConfigError, SourceConfig
from thresher.modalities.text import tl_hooks
from thresher.modalities.text.loading import hf_config, local_model_path


def preflight_text(source: SourceConfig, base_dir: Path) -> None:
    if source.backbone.kind == "hf_text":
        config = hf_text_config(source)
        if config is not None:
            _check_hf_text_hooks(source, int(config.get("num_hidden_layers", -1)))
            _check_context(source, config.get("max_position_embeddings"))
    elif source.backbone.kind == "transformer_lens":
        for hook in source.hooks:
            tl_hooks.check_hook(hook, source.backbone.config)
        if source.backbone.config is not None:
            _check_context(source, source.backbone.config.get("n_ctx"))


def hf_text_config(source: SourceConfig) -> dict[str, Any] | None:
    """An hf_text backbone's config as a dict, from `config` or the local model folder (None:
    a hub name, whose config is not here; the backbone says whether it loads offline)."""
    backbone = source.backbone
    if backbone.config is not None:
        return hf_config(backbone).to_dict()
    path = Path(local_model_path(backbone.model)) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _check_hf_text_hooks(source: SourceConfig, n_layers: int) -> None:
    if n_layers < 0:
        return
    valid = ["embeddings"] + [f"layer.{i}" for i in range(n_layers)]
    for hook in source.hooks:
        if hook not in valid:
            raise ConfigError(
                f"source.hook {hook!r} is not a hook of the {n_layers}-layer hf_text model "
                f"{source.backbone.model or '(config)'}; set it to one of: "
                f"{', '.join(valid[:3])}, ..., {valid[-1]}")


def _check_context(source: SourceConfig, n_ctx: Any) -> None:
    """The same check the backbone makes once loaded (text_backbone), before anything runs."""
    if n_ctx is not None and source.inputs.context > int(n_ctx):
        raise ConfigError(
            f"source.inputs.context is {source.inputs.context} but the backbone takes at "
            f"most {int(n_ctx)} tokens; lower context")
