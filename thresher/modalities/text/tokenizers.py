"""Tokenizers of the text backbones: content ids, and the special ids put around a window.

Each text kind loads its own (thresher/modalities/text/kind.py, `load_tokenizer`): a
transformers tokenizer (hf_text; TransformerLens models that name one) or UTF-8 bytes for a
random-weight TransformerLens model without one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from thresher.modalities.model_tools import hub_offline
from thresher.modalities.text.loading import BYTE_BOS, BYTE_VOCAB, unloadable
from thresher.modalities.text.spec import TextBackboneConfig


class Tokenizer(Protocol):
    prefix: list[int]  # special ids put before a window's content ([CLS], [BOS])
    suffix: list[int]  # special ids put after it ([SEP]; nothing for causal models)
    pad_id: int

    def encode(self, text: str) -> list[int]:
        """Content ids, no special tokens."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...


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

    size = BYTE_VOCAB

    def __init__(self, prepend_bos: bool = True) -> None:
        self.prefix = [BYTE_BOS] if prepend_bos else []
        self.suffix: list[int] = []
        self.pad_id = BYTE_BOS

    def encode(self, text: str) -> list[int]:
        return [b + 1 for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) - 1 for i in ids if 0 < int(i) < BYTE_VOCAB).decode(
            "utf-8", errors="replace")


def hf_auto_tokenizer(name: str, cfg: TextBackboneConfig, **kwargs: Any) -> Any:
    """A transformers tokenizer from a local folder or the cache, offline."""
    from transformers import AutoTokenizer

    try:
        with hub_offline():
            return AutoTokenizer.from_pretrained(name, local_files_only=True, **kwargs)
    except Exception as exc:  # transformers raises OSError, ValueError, ... for a missing model
        raise unloadable(cfg, exc) from exc
