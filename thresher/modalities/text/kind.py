"""What the text modality asks of a backbone kind (thresher/modalities/text/hf_text.py,
transformer_lens.py): its tokenizer, its backbone, the checks before a run, and the CE/KL
splice where it has one. Each kind's settings name its class (text/spec.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from thresher.config import SourceConfig
from thresher.modalities.contract import Backbone, kind_code
from thresher.modalities.text.spec import TextBackboneConfig
from thresher.modalities.text.tokenizers import Tokenizer

if TYPE_CHECKING:
    import torch

Replace = Callable[["torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class SpliceTarget:
    """A whole language model with a replacement wired in at one hook."""

    model: Any
    logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (tokens, attention mask)


class TextKind(Protocol):
    def tokenizer(self, cfg: TextBackboneConfig) -> Tokenizer:
        """The tokenizer that matches the backbone, loaded without the model."""
        ...

    def backbone(self, cfg: TextBackboneConfig, hooks: Sequence[str],
                 device: str) -> Backbone:
        """The model cut after its deepest hook, in eval mode on `device`."""
        ...

    def load(self, source: SourceConfig, device: str, base_dir: Path) -> Backbone: ...

    def preflight(self, source: SourceConfig) -> None:
        """Checks from configs alone (no weights): hooks, the longest window."""
        ...


class SplicingKind(TextKind, Protocol):
    """A text kind whose models can be language models (CE-loss recovered, KL)."""

    def splice_problem(self, source: SourceConfig) -> str | None:
        """None where this source's model has a next-token loss, else why not."""
        ...

    def splice(self, cfg: TextBackboneConfig, hook: str, device: str,
               apply: Replace) -> SpliceTarget:
        """The whole model, `apply` replacing the activations at `hook`."""
        ...


def text_kind(cfg: TextBackboneConfig) -> TextKind:
    kind: TextKind = kind_code(cfg)
    return kind


def load_tokenizer(cfg: TextBackboneConfig) -> Tokenizer:
    """The tokenizer that matches the backbone of `cfg`, loaded without the model."""
    return text_kind(cfg).tokenizer(cfg)


def load_text_backbone(cfg: TextBackboneConfig, hooks: str | Sequence[str],
                       device: str = "cpu") -> Backbone:
    """The text backbone of `cfg`, cut after its deepest hook, in eval mode on `device`."""
    return text_kind(cfg).backbone(cfg, (hooks,) if isinstance(hooks, str) else tuple(hooks),
                                   device)
