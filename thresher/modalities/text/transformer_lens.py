"""The `transformer_lens` kind: a TransformerLens HookedTransformer (settings: text/spec.py).

Its tokenizer is the one the model names, or UTF-8 bytes for a random-weight model without one;
hooks are TransformerLens hook names, checked before a run against the names it has
(tl_hooks.py); CE/KL splices in with `run_with_hooks` on the whole model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from thresher.config import SourceConfig
from thresher.modalities.model_tools import hub_offline
from thresher.modalities.text import tl_hooks
from thresher.modalities.text.kind import Replace, SpliceTarget
from thresher.modalities.text.loading import BYTE_VOCAB, check_vocab, unloadable
from thresher.modalities.text.preflight import check_context
from thresher.modalities.text.spec import TextBackboneConfig
from thresher.modalities.text.tokenizers import ByteTokenizer, HFTokenizer, hf_auto_tokenizer

if TYPE_CHECKING:
    from thresher.modalities.text.backbones import TextBackbone


class TransformerLens:
    def tokenizer(self, cfg: TextBackboneConfig) -> HFTokenizer | ByteTokenizer:
        if cfg.config is not None:
            config = cfg.config
            prepend_bos = bool(config.get("default_prepend_bos", True))
            if config.get("tokenizer_name"):
                return _named_tokenizer(str(config["tokenizer_name"]), prepend_bos, cfg)
            check_vocab(int(config.get("d_vocab", -1)), BYTE_VOCAB,
                        "the byte-level tokenizer (used when the config names no tokenizer_name)")
            return ByteTokenizer(prepend_bos)
        from transformer_lens.loading_from_pretrained import get_pretrained_model_config

        try:
            with hub_offline():
                tl_cfg = get_pretrained_model_config(cfg.model, local_files_only=True)
        except Exception as exc:
            raise unloadable(cfg, exc) from exc
        return _named_tokenizer(tl_cfg.tokenizer_name or cfg.model,
                                bool(tl_cfg.default_prepend_bos), cfg)

    def backbone(self, cfg: TextBackboneConfig, hooks: Sequence[str],
                 device: str) -> TextBackbone:
        from thresher.modalities.text.backbones import TransformerLensBackbone

        return TransformerLensBackbone(cfg, hooks, device)

    def load(self, source: SourceConfig, device: str, base_dir: Path) -> TextBackbone:
        from thresher.modalities.text.backbones import fit_context

        return fit_context(source, self.backbone(source.backbone, source.hooks, device))

    def preflight(self, source: SourceConfig) -> None:
        config = source.backbone.config
        for hook in source.hooks:
            tl_hooks.check_hook(hook, config)
        if config is not None:
            check_context(source, config.get("n_ctx"))

    def splice_problem(self, source: SourceConfig) -> str | None:
        return None  # every HookedTransformer has an unembedding

    def splice(self, cfg: TextBackboneConfig, hook: str, device: str,
               apply: Replace) -> SpliceTarget:
        from thresher.modalities.text.backbones import TransformerLensBackbone

        model = TransformerLensBackbone(cfg, hook, device).model
        replace = [(hook, lambda acts, hook: apply(acts))]
        return SpliceTarget(model, lambda tokens, mask: model.run_with_hooks(
            tokens, fwd_hooks=replace, return_type="logits"))


def _named_tokenizer(tokenizer_name: str, prepend_bos: bool,
                     cfg: TextBackboneConfig) -> HFTokenizer:
    hf = hf_auto_tokenizer(tokenizer_name, cfg)
    if hf.pad_token_id is None and hf.eos_token_id is not None:
        hf.pad_token = hf.eos_token  # as TransformerLens does for GPT-style tokenizers
    bos = hf.bos_token_id if hf.bos_token_id is not None else hf.eos_token_id
    prefix = [int(bos)] if prepend_bos and bos is not None else []
    return HFTokenizer(hf, prefix=prefix, suffix=[])
