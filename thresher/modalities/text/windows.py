"""Text inputs: tokenised windows, input batches and the inputs manifest.

A corpus (thresher/modalities/text/corpora.py) is shuffled with the run seed; `build_inputs`
tokenises texts in that order until `max_tokens` content tokens are cut, and cuts each text into
windows that fill the backbone's context once its special tokens are added. One window is one
example; its id is its row in the stream's manifest (`inputs/<stream_id>.parquet`), which
records the ids fed to the model.

Windows are grouped into input batches, one per backbone forward, of fixed shape: padding is
cut by sorting runs of windows by length before batching, and the seeded shuffle is kept by
shuffling the batches afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from thresher.config import ConfigError, SourceConfig
from thresher.modalities.contract import InputBatch, Inputs
from thresher.modalities.text.corpora import read_corpus
from thresher.modalities.text.kind import load_tokenizer
from thresher.modalities.text.tokenizers import Tokenizer

RUN_BATCHES = 32  # windows are length-sorted in runs of this many batches

# The inputs manifest of a text stream.
TEXT_MANIFEST_SCHEMA = pa.schema(
    [
        ("example_id", pa.int64()),
        ("origin", pa.string()),
        ("text", pa.string()),
        ("token_ids", pa.list_(pa.int32())),  # as fed, special tokens included
    ]
)


@dataclass(frozen=True, eq=False)
class TokenBatch(InputBatch):
    """Windows of token ids, right-padded; rows past the examples are filler (example_id -1)."""

    tokens: np.ndarray  # int32 [batch, context]
    lengths: np.ndarray  # int32 [batch]: ids fed, special tokens included
    n_prefix: np.ndarray  # int32 [batch]: special ids before the content
    n_suffix: np.ndarray  # int32 [batch]: special ids after it
    example_id: np.ndarray  # int64 [batch]


def _cut_windows(texts: list[tuple[str, str | list[int]]], order: np.ndarray,
                 tokenizer: Tokenizer, width: int, min_tokens: int,
                 max_tokens: int | None) -> tuple[list[str], list[list[int]]]:
    """Content windows of the texts in `order`, stopping once `max_tokens` are cut."""
    origins: list[str] = []
    windows: list[list[int]] = []
    total = 0
    budget = max_tokens if max_tokens is not None else float("inf")
    for i in order:
        origin, text = texts[int(i)]
        ids = list(text) if isinstance(text, list) else tokenizer.encode(text)
        for start in range(0, len(ids), width):
            window = ids[start:start + width]
            if len(window) < min_tokens:
                continue
            room = budget - total
            if len(window) > room:
                window = window[: int(room)]
                if len(window) < min_tokens:
                    return origins, windows
            origins.append(origin)
            windows.append(window)
            total += len(window)
            if total >= budget:
                return origins, windows
    return origins, windows


def _batch(rows: np.ndarray, fed: list[list[int]], batch_size: int, context: int,
           n_prefix: int, n_suffix: int, pad_id: int) -> TokenBatch:
    """One input batch of the examples `rows`; rows past them are filler (example_id -1)."""
    tokens = np.full((batch_size, context), pad_id, dtype=np.int32)
    lengths = np.zeros(batch_size, dtype=np.int32)
    for r, example in enumerate(rows):
        ids = fed[int(example)]
        tokens[r, : len(ids)] = ids
        lengths[r] = len(ids)
    real = np.arange(batch_size) < len(rows)
    example_id = np.full(batch_size, -1, dtype=np.int64)
    example_id[: len(rows)] = rows
    return TokenBatch(tokens=tokens, lengths=lengths,
                      n_prefix=np.where(real, n_prefix, 0).astype(np.int32),
                      n_suffix=np.where(real, n_suffix, 0).astype(np.int32),
                      example_id=example_id)


def build_inputs(source: SourceConfig, seed: int, base_dir: Path,
                 tokenizer: Tokenizer) -> Inputs:
    """Windows, input batches and manifest of a stream; the same for the same seed."""
    cfg = source.inputs
    prefix, suffix = list(tokenizer.prefix), list(tokenizer.suffix)
    width = cfg.context - len(prefix) - len(suffix)
    if width < 1:
        raise ConfigError(
            f"source.inputs.context is {cfg.context} but the tokenizer adds {len(prefix)} + "
            f"{len(suffix)} special tokens to every window; raise context")
    min_tokens = max(1, cfg.min_tokens)
    texts = read_corpus(source, base_dir)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    origins, windows = _cut_windows(texts, order, tokenizer, width, min_tokens, cfg.max_tokens)
    if not windows:
        raise ConfigError(
            f"the inputs ({cfg.kind}) gave no window of at least {min_tokens} tokens; add text "
            "or lower source.inputs.min_tokens")

    fed = [prefix + w + suffix for w in windows]
    lengths = np.array([len(ids) for ids in fed], dtype=np.int64)
    bs = source.batch_size
    run = RUN_BATCHES * bs
    batches = []
    for start in range(0, len(fed), run):
        rows = np.arange(start, min(start + run, len(fed)))
        rows = rows[np.argsort(lengths[rows], kind="stable")]
        batches.extend(_batch(rows[b:b + bs], fed, bs, cfg.context, len(prefix), len(suffix),
                              tokenizer.pad_id) for b in range(0, len(rows), bs))
    batches = [batches[i] for i in rng.permutation(len(batches))]

    manifest = pa.table(
        {
            "example_id": pa.array(np.arange(len(fed), dtype=np.int64)),
            "origin": pa.array(origins, type=pa.string()),
            "text": pa.array([tokenizer.decode(w) for w in windows], type=pa.string()),
            "token_ids": pa.array(fed, type=pa.list_(pa.int32())),
        },
        schema=TEXT_MANIFEST_SCHEMA,
    )
    return Inputs(batches=batches, manifest=manifest, n_examples=len(fed),
                  planned_rows=int(sum(len(w) for w in windows)))


def prepare_text_inputs(source: SourceConfig, seed: int, base_dir: Path) -> Inputs:
    return build_inputs(source, seed, base_dir, load_tokenizer(source.backbone))
