"""The text modality's examples in the report: each example's tokens as display pieces, so
the browser shows a window of context around the firing token and highlights it."""

from __future__ import annotations

from typing import Any

import pandas as pd

from thresher.modalities.render import Examples, ExamplesRequest
from thresher.modalities.text.kind import load_tokenizer


class TextExamples(Examples):
    """Each example's tokens as display pieces (a leading space where a word starts)."""

    kind = "text"

    def __init__(self, manifest: pd.DataFrame, tokenizer: Any) -> None:
        super().__init__(manifest)
        self.tokenizer = tokenizer

    def add(self, entry: dict[str, Any], example_id: int, position: int) -> None:
        if "tokens" in entry or "error" in entry:
            return
        row = self.row(example_id)
        assert row is not None
        entry["tokens"] = token_pieces(self.tokenizer, [int(i) for i in row["token_ids"]])


def token_pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    """Display text of each token, so that joined they read as the decoded text: each token's
    piece is what it adds to the decoded prefix (WordPiece's `##` and BPE's spaces then come
    out right); where decoding is not prefix-stable, the token decoded alone after a space."""
    pieces, before = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[:i + 1])
        if text.startswith(before):
            pieces.append(text[len(before):])
        else:
            pieces.append(" " + tokenizer.decode(ids[i:i + 1]))
        before = text
    return pieces


def render_text_examples(request: ExamplesRequest) -> Examples:
    return TextExamples(request.manifest, load_tokenizer(request.source.backbone))
