"""Pre-tokenised text (token_files) is cut into the same windows as the raw text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.text_data import BYTES
from thresher.config import ConfigError, load_config
from thresher.harvest.harvester import Harvester
from thresher.harvest.inputs import prepare_inputs, write_manifest
from thresher.modalities.text.kind import load_tokenizer
from thresher.modalities.text.windows import TEXT_MANIFEST_SCHEMA as INPUTS_SCHEMA

TEXTS = {"a.txt": "the quick brown fox jumps over the lazy dog " * 9, "b.txt": "hello world " * 3}


def _source(kind: str, paths: list[str]) -> object:
    return load_config({"source": {
        "backbone": {"kind": "transformer_lens", "model": "", "config": BYTES.config},
        "hook": "blocks.0.hook_resid_post", "batch_size": 4,
        "inputs": {"kind": kind, "paths": paths, "context": 32}}}).source


def test_token_files_give_the_windows_of_the_raw_text(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(BYTES)
    for name, text in TEXTS.items():
        (tmp_path / name).write_text(text)
        np.save(tmp_path / name.replace(".txt", ".npy"), np.array(tokenizer.encode(text)))
    raw = prepare_inputs(_source("text_files", [str(tmp_path / "*.txt")]), 0, tmp_path)
    pre = prepare_inputs(_source("token_files", [str(tmp_path / "*.npy")]), 0, tmp_path)
    assert raw.manifest.column("token_ids").equals(pre.manifest.column("token_ids"))
    assert raw.manifest.column("text").equals(pre.manifest.column("text"))
    for a, b in zip(raw.batches, pre.batches, strict=True):
        assert all(np.array_equal(column, getattr(b, k)) for k, column in vars(a).items())
    harvester = Harvester(_source("token_files", [str(tmp_path / "*.npy")]))
    block = harvester.harvest(pre.batches[0])
    assert 0 not in block.position.tolist()  # BOS (position 0) is never a row
    written = write_manifest(tmp_path / "run", "s0", pre.manifest)
    assert written == tmp_path / "run" / "inputs" / "s0.parquet"
    assert pq.read_table(written).equals(pre.manifest.cast(INPUTS_SCHEMA))


def test_token_files_must_be_integer_vectors(tmp_path: Path) -> None:
    np.save(tmp_path / "bad.npy", np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ConfigError, match="1-D integer arrays"):
        prepare_inputs(_source("token_files", [str(tmp_path / "bad.npy")]), 0, tmp_path)
