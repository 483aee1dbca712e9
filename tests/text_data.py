"""Text test data shared by several test modules: a byte-level backbone, and a text source
over a few files of varied length and script."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.tiny_models import TINY_TL
from thresher.config import SourceConfig, load_config
from thresher.modalities.text.spec import TransformerLensConfig

# A random-weight TransformerLens backbone: byte-level tokenizer, prefix [BOS=0], no suffix.
BYTES = TransformerLensConfig(model="", config=TINY_TL)


TEXTS = [
    "Return the sum of a and b.",
    "A much longer docstring that spans more tokens than the context window holds, so that "
    "the window cutter splits it into several windows of different lengths, the last of "
    "which is short.",
    "Ünïcödé text: naïve café, 数字, and emoji 🙂 exercise multi-byte tokens.",
    "x",  # too short: dropped
    "Open a file and return a stream.",
    "Raise ValueError if the argument is negative.",
]


def source_of(tmp_path: Path, backbone: dict[str, Any], hook: str, context: int = 24,
              batch_size: int = 4) -> SourceConfig:
    for i, text in enumerate(TEXTS):
        (tmp_path / f"doc{i}.txt").write_text(text, encoding="utf-8")
    cfg = load_config({
        "source": {"backbone": backbone, "hook": hook, "batch_size": batch_size,
                   "inputs": {"kind": "text_files", "paths": [str(tmp_path / "doc*.txt")],
                              "context": context, "min_tokens": 3}},
    })
    return cfg.source
