"""The text modality's checks before a run, from configs alone (no weights, no import of a
model library): each kind checks its hooks and the windows against the longest input its model
takes (`TextKind.preflight`: text/hf_text.py, text/transformer_lens.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thresher.config import ConfigError, SourceConfig
from thresher.modalities.contract import kind_code


def preflight_text(source: SourceConfig, base_dir: Path) -> None:
    kind_code(source.backbone).preflight(source)


def check_context(source: SourceConfig, n_ctx: Any) -> None:
    """The same check the backbone makes once loaded (`fit_context`), before anything runs."""
    if n_ctx is not None and source.inputs.context > int(n_ctx):
        raise ConfigError(
            f"source.inputs.context is {source.inputs.context} but the backbone takes at "
            f"most {int(n_ctx)} tokens; lower context")
