"""Splice a reconstruction into a language model at the hook: CE-loss recovered and KL.

The whole model runs (not cut at the hook, unlike the harvest backbones); at the hook the
activations of the content positions (the rows an SAE sees: not BOS/[CLS]/[SEP], not padding)
are replaced by `replace(x) -> x_hat`, with x [rows, d] raw activations. SAELens's
definitions (sae_lens/evals.py, `get_recons_loss`; tests/test_splice_saelens.py checks them):

  CE recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean)     zero: the hook's output set to 0
  KL recovered = (KL_zero − KL_sae) / KL_zero                  KL = KL(p_clean ‖ p_spliced)

so an identity replacement gives 1 and a zero one gives 0. As SAELens does, the zero ablation
sets EVERY position to 0 (BOS included), the SAE replaces the content positions only, next-token
CE is averaged over the predictions made at content positions (of a real next token) and KL
over the content positions (the last one included). `*_content` columns keep thresher's earlier
baseline, which zeroes only the content positions and leaves BOS/[CLS]/[SEP] intact: a milder
ablation (models lean on BOS as an attention sink), hence a smaller CE_zero − CE_clean.

transformer_lens: a TransformerLens hook (`run_with_hooks`) on the full HookedTransformer.
hf_text: a forward hook on the hooked layer of a causal LM (`AutoModelForCausalLM`); encoders
without a language-model head (MiniLM) have no next-token loss, and `splice_supported` says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from thresher.config import BackboneConfig, ConfigError, SourceConfig
from thresher.modalities.model_tools import hub_offline, layer_list, seeded
from thresher.modalities.text.backbones import TransformerLensBackbone
from thresher.modalities.text.loading import hf_config, local_model_path

Replace = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LMMetrics:
    ce_loss_clean: float
    ce_loss_sae: float
    ce_loss_zero: float
    ce_loss_recovered: float
    kl_div: float  # mean KL(p_clean || p_sae) per content position
    kl_div_zero: float
    kl_recovered: float
    ce_loss_zero_content: float  # only the content positions zeroed
    ce_loss_recovered_content: float
    kl_div_zero_content: float
    kl_recovered_content: float


class SplicedLM:
    """The full model of a text source, with a switchable replacement at its hook."""

    def __init__(self, source: SourceConfig, device: str = "cpu", hook: str | None = None) -> None:
        """`hook`: where to splice; may be left out when the source has one hook."""
        if hook is None:
            if len(source.hooks) != 1:
                raise ConfigError(f"the source {source.name!r} has the hooks "
                                  f"{list(source.hooks)}; name the one to splice into")
            hook = source.hooks[0]
        elif hook not in source.hooks:
            raise ConfigError(f"hook {hook!r} is not a hook of the source {source.name!r}; its "
                              f"hooks: {list(source.hooks)}")
        self.source = source
        self.device = device
        self.hook = hook
        self._replace: Replace | None = None
        self._content: torch.Tensor | None = None  # [B, T] bool: positions to replace
        kind = source.backbone.kind
        if kind == "transformer_lens":
            tl = TransformerLensBackbone(source.backbone, hook, device)
            self.model: Any = tl.model
            self._logits = self._tl_logits
        elif kind == "hf_text":
            self.model = _hf_causal_lm(source.backbone, device)
            self._layer = _hf_layer(self.model, hook)
            self._layer.register_forward_hook(self._hf_hook)
            self._logits = self._hf_logits
        else:
            raise ConfigError(f"cannot splice into a {kind!r} backbone; "
                              "valid: transformer_lens, hf_text")

    # -- replacement at the hook ---------------------------------------------------------------

    def _apply(self, acts: torch.Tensor) -> torch.Tensor:
        if self._replace is None or self._content is None:
            return acts
        shape = acts.shape
        flat = acts.reshape(shape[0], shape[1], -1)  # per-head hooks: heads side by side
        mask = self._content.to(flat.device)
        out = flat.clone()
        rows = flat[mask].float()
        out[mask] = self._replace(rows).to(out.dtype)
        return out.reshape(shape)

    def _hf_hook(self, module: torch.nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, tuple):
            return (self._apply(output[0]), *output[1:])
        return self._apply(output)

    def _tl_logits(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hook = [(self.hook, lambda acts, hook: self._apply(acts))]
        return self.model.run_with_hooks(tokens, fwd_hooks=hook, return_type="logits")

    def _hf_logits(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=tokens, attention_mask=attention_mask).logits

    @contextmanager
    def replacing(self, replace: Replace | None, content: torch.Tensor) -> Iterator[None]:
        self._replace, self._content = replace, content
        try:
            yield
        finally:
            self._replace, self._content = None, None

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor, attention_mask: torch.Tensor, content: torch.Tensor,
               replace: Replace | None) -> torch.Tensor:
        with self.replacing(replace, content):
            return self._logits(tokens.to(self.device), attention_mask.to(self.device)).float()


def _hf_causal_lm(cfg: BackboneConfig, device: str) -> Any:
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


def _hf_layer(model: torch.nn.Module, hook: str) -> torch.nn.Module:
    match = re.fullmatch(r"layer\.(\d+)", hook)
    if match is None:
        raise ConfigError(f"splicing into an hf_text model needs a `layer.N` hook, got {hook!r}")
    _, _, layers = layer_list(model)
    index = int(match.group(1))
    if index >= len(layers):
        raise ConfigError(f"hook {hook!r}: the model has {len(layers)} layers")
    return layers[index]


def splice_supported(source: SourceConfig) -> str | None:
    """None if CE/KL can be measured for this source, else the reason why not."""
    if source.backbone.kind == "transformer_lens":
        return None
    if source.backbone.kind == "hf_text":
        from transformers import AutoConfig

        try:
            if source.backbone.config is not None:
                config = hf_config(source.backbone)
            else:
                with hub_offline():
                    config = AutoConfig.from_pretrained(
                        local_model_path(source.backbone.model),
                        local_files_only=True)
        except Exception as exc:
            return f"cannot read the model config ({type(exc).__name__})"
        from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

        # BERT-style encoders also map to an LM-head class, but only as decoders (is_decoder).
        encoder = type(config) in MODEL_FOR_MASKED_LM_MAPPING and not config.is_decoder
        if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING or encoder:
            return (f"{type(config).__name__} is an encoder without a next-token head "
                    "(CE-loss recovered is defined for causal language models)")
        return None
    return f"{source.backbone.kind} is not a language model"


def _pad(windows: Sequence[np.ndarray], pad_id: int, n_prefix: int, n_suffix: int
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(w) for w in windows)
    tokens = torch.full((len(windows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(windows), width, dtype=torch.long)
    content = torch.zeros(len(windows), width, dtype=torch.bool)
    for i, w in enumerate(windows):
        tokens[i, : len(w)] = torch.as_tensor(np.asarray(w, dtype=np.int64))
        mask[i, : len(w)] = 1
        content[i, n_prefix: len(w) - n_suffix] = True
    return tokens, mask, content


def _zero(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


@torch.no_grad()
def splice_metrics(lm: SplicedLM, windows: Sequence[np.ndarray],
                   replacements: Mapping[str, Replace], pad_id: int, n_prefix: int,
                   n_suffix: int, batch_size: int = 16) -> dict[str, LMMetrics]:
    """CE and KL of each replacement against the clean model and the two zero ablations, over
    `windows` (token id arrays as fed to the model, special tokens included)."""
    names = list(replacements)
    ce = {name: 0.0 for name in [*names, "__clean", "__zero", "__zero_content"]}
    kl = {name: 0.0 for name in [*names, "__zero", "__zero_content"]}
    ce_count = kl_count = 0
    for start in range(0, len(windows), batch_size):
        tokens, mask, content = _pad(windows[start:start + batch_size], pad_id, n_prefix,
                                     n_suffix)
        target = tokens[:, 1:].to(lm.device)
        # CE: predictions made at a content position, of a real next token; KL: content.
        predict = (content[:, :-1] & mask[:, 1:].bool()).to(lm.device)
        at = content.to(lm.device)
        if not bool(at.any()):
            continue
        ce_count += int(predict.sum())
        kl_count += int(at.sum())
        clean_logp = F.log_softmax(lm.logits(tokens, mask, content, None), -1)
        ce["__clean"] += _ce_sum(clean_logp[:, :-1][predict], target[predict])
        everywhere = torch.ones_like(content)
        runs = [("__zero", _zero, everywhere), ("__zero_content", _zero, content),
                *((name, replace, content) for name, replace in replacements.items())]
        for name, replace, where in runs:
            logp = F.log_softmax(lm.logits(tokens, mask, where, replace), -1)
            ce[name] += _ce_sum(logp[:, :-1][predict], target[predict])
            kl[name] += float((clean_logp.exp() * (clean_logp - logp))[at].sum())
    if ce_count == 0:
        raise ValueError("no window has a content token followed by another token: nothing "
                         "to predict")
    mean_ce = {name: value / ce_count for name, value in ce.items()}
    mean_kl = {name: value / kl_count for name, value in kl.items()}
    clean = mean_ce["__clean"]
    out = {}
    for name in names:
        sae_ce, sae_kl = mean_ce[name], mean_kl[name]
        zero_ce, zero_kl = mean_ce["__zero"], mean_kl["__zero"]
        content_ce, content_kl = mean_ce["__zero_content"], mean_kl["__zero_content"]
        out[name] = LMMetrics(
            ce_loss_clean=clean, ce_loss_sae=sae_ce, ce_loss_zero=zero_ce,
            ce_loss_recovered=_ratio(zero_ce - sae_ce, zero_ce - clean),
            kl_div=sae_kl, kl_div_zero=zero_kl, kl_recovered=_ratio(zero_kl - sae_kl, zero_kl),
            ce_loss_zero_content=content_ce,
            ce_loss_recovered_content=_ratio(content_ce - sae_ce, content_ce - clean),
            kl_div_zero_content=content_kl,
            kl_recovered_content=_ratio(content_kl - sae_kl, content_kl))
    return out


def _ce_sum(logp: torch.Tensor, target: torch.Tensor) -> float:
    return float(-logp.gather(-1, target[:, None]).sum())


def _ratio(num: float, den: float) -> float:
    return num / den if abs(den) > 1e-12 else float("nan")
