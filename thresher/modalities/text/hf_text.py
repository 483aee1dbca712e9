"""The `hf_text` kind: a transformers text encoder or causal LM (settings: text/spec.py).

Its tokenizer is the model folder's own (MiniLM's for a random-weight model built from
`config`); hooks are `embeddings` or `layer.N`, checked before a run against the layer count of
the folder's config.json or of `config`; CE/KL splices into a causal LM's layer N.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thresher.config import ConfigError, SourceConfig
from thresher.modalities.model_tools import hub_offline, layer_list, seeded
from thresher.modalities.text.kind import Replace, SpliceTarget
from thresher.modalities.text.loading import MINILM, check_vocab, hf_config, local_model_path
from thresher.modalities.text.preflight import check_context
from thresher.modalities.text.spec import HFTextConfig, TextBackboneConfig
from thresher.modalities.text.tokenizers import HFTokenizer, hf_auto_tokenizer

if TYPE_CHECKING:
    import torch

    from thresher.modalities.text.backbones import TextBackbone


class HFText:
    def tokenizer(self, cfg: TextBackboneConfig) -> HFTokenizer:
        # A random-weight model built from `config` without a folder uses MiniLM's tokenizer.
        tokenizer = HFTokenizer(hf_auto_tokenizer(local_model_path(cfg.model or MINILM), cfg))
        if cfg.config is not None:
            check_vocab(hf_config(cfg).vocab_size, tokenizer.size,
                        f"the tokenizer of {cfg.model or MINILM!r}")
        return tokenizer

    def backbone(self, cfg: TextBackboneConfig, hooks: Sequence[str],
                 device: str) -> TextBackbone:
        from thresher.modalities.text.backbones import HFTextBackbone

        return HFTextBackbone(cfg, hooks, device)

    def load(self, source: SourceConfig, device: str, base_dir: Path) -> TextBackbone:
        from thresher.modalities.text.backbones import fit_context

        return fit_context(source, self.backbone(source.backbone, source.hooks, device))

    def preflight(self, source: SourceConfig) -> None:
        config = model_config(source.backbone)
        if config is not None:
            _check_hooks(source, int(config.get("num_hidden_layers", -1)))
            check_context(source, config.get("max_position_embeddings"))

    def splice_problem(self, source: SourceConfig) -> str | None:
        from transformers import (
            MODEL_FOR_CAUSAL_LM_MAPPING,
            MODEL_FOR_MASKED_LM_MAPPING,
            AutoConfig,
        )

        cfg = source.backbone
        assert isinstance(cfg, HFTextConfig)
        try:
            if cfg.config is not None:
                config = hf_config(cfg)
            else:
                with hub_offline():
                    config = AutoConfig.from_pretrained(local_model_path(cfg.model),
                                                        local_files_only=True)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            return f"cannot read the model config ({type(exc).__name__}: {reason})"
        # BERT-style encoders also map to an LM-head class, but only as decoders (is_decoder).
        encoder = type(config) in MODEL_FOR_MASKED_LM_MAPPING and not config.is_decoder
        if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING or encoder:
            return (f"{type(config).__name__} is an encoder without a next-token head "
                    "(CE-loss recovered is defined for causal language models)")
        return None

    def splice(self, cfg: TextBackboneConfig, hook: str, device: str,
               apply: Replace) -> SpliceTarget:
        model = _causal_lm(cfg, device)

        def replace_output(module: torch.nn.Module, args: tuple, output: Any) -> Any:
            if isinstance(output, tuple):
                return (apply(output[0]), *output[1:])
            return apply(output)

        _layer(model, hook).register_forward_hook(replace_output)
        return SpliceTarget(model, lambda tokens, mask: model(input_ids=tokens,
                                                              attention_mask=mask).logits)


def model_config(cfg: TextBackboneConfig) -> dict[str, Any] | None:
    """The model's config as a dict, from `config` or the local model folder (None: a hub
    name, whose config is not here; the backbone says whether it loads offline)."""
    if cfg.config is not None:
        return hf_config(cfg).to_dict()
    path = Path(local_model_path(cfg.model)) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _check_hooks(source: SourceConfig, n_layers: int) -> None:
    if n_layers < 0:
        return
    valid = ["embeddings"] + [f"layer.{i}" for i in range(n_layers)]
    for hook in source.hooks:
        if hook not in valid:
            raise ConfigError(
                f"source.hook {hook!r} is not a hook of the {n_layers}-layer hf_text model "
                f"{source.backbone.model or '(config)'}; set it to one of: "
                f"{', '.join(valid[:3])}, ..., {valid[-1]}")


def _causal_lm(cfg: TextBackboneConfig, device: str) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        if cfg.config is not None:
            with seeded():
                model = AutoModelForCausalLM.from_config(hf_config(cfg))
        else:
            with hub_offline():
                model = AutoModelForCausalLM.from_pretrained(
                    local_model_path(cfg.model), local_files_only=True)
    except ValueError as exc:  # transformers: "Unrecognized configuration class ..."
        raise ConfigError(f"source.backbone {cfg.model or cfg.config!r} is not a causal "
                          f"language model, so it has no next-token loss to splice into "
                          f"({str(exc).splitlines()[0][:200]})") from exc
    return model.to(device=device).eval()


def _layer(model: torch.nn.Module, hook: str) -> torch.nn.Module:
    match = re.fullmatch(r"layer\.(\d+)", hook)
    if match is None:
        raise ConfigError(f"splicing into an hf_text model needs a `layer.N` hook, got {hook!r}")
    _, _, layers = layer_list(model)
    index = int(match.group(1))
    if index >= len(layers):
        raise ConfigError(f"hook {hook!r}: the model has {len(layers)} layers")
    return layers[index]
