"""Splice a reconstruction into a language model at the hook: CE-loss recovered and KL.

The whole model runs (not cut at the hook, unlike the harvest backbones); at the hook the
activations of the content positions (the rows an SAE sees: not BOS/[CLS]/[SEP], not padding)
are replaced by `replace(x) -> x_hat`, with x [rows, d] raw activations. SAELens's
definitions (sae_lens/evals.py, `get_recons_loss`; checked by
tests/modalities/text/test_splice_saelens.py):

  CE recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean)     zero: the hook's output set to 0
  KL recovered = (KL_zero − KL_sae) / KL_zero                  KL = KL(p_clean ‖ p_spliced)

so an identity replacement gives 1 and a zero one gives 0. As SAELens does, the zero ablation
sets EVERY position to 0 (BOS included), the SAE replaces the content positions only, next-token
CE is averaged over the predictions made at content positions (of a real next token) and KL
over the content positions (the last one included). `*_content` columns keep thresher's earlier
baseline, which zeroes only the content positions and leaves BOS/[CLS]/[SEP] intact: a milder
ablation (models lean on BOS as an attention sink), hence a smaller CE_zero − CE_clean.

Each text kind wires the replacement into its whole model (`SplicingKind.splice`):
transformer_lens with `run_with_hooks`, hf_text with a forward hook on the hooked layer of a
causal LM (`AutoModelForCausalLM`); encoders without a language-model head (MiniLM) have no
next-token loss, and `splice_supported` says so.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from thresher.config import ConfigError, SourceConfig
from thresher.modalities.contract import kind_code
from thresher.modalities.text.kind import Replace, SplicingKind


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
        kind: SplicingKind = kind_code(source.backbone)
        target = kind.splice(source.backbone, hook, device, self._apply)
        self.model: Any = target.model
        self._logits = target.logits

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


def splice_supported(source: SourceConfig) -> str | None:
    """None if CE/KL can be measured for this source, else the reason why not."""
    splice_problem = getattr(kind_code(source.backbone), "splice_problem", None)
    if splice_problem is None:
        return f"{source.backbone.kind} is not a language model"
    problem: str | None = splice_problem(source)
    return problem


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
