"""Inputs: the docstrings corpus, windows, input batches and the manifest."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from tests.text_data import BYTES
from thresher.config import ConfigError, SourceConfig, load_config
from thresher.modalities.contract import Inputs
from thresher.modalities.text.corpora import gather_python_docstrings, read_text_files
from thresher.modalities.text.kind import load_tokenizer
from thresher.modalities.text.tokenizers import Tokenizer
from thresher.modalities.text.windows import RUN_BATCHES, build_inputs
from thresher.modalities.text.windows import TEXT_MANIFEST_SCHEMA as INPUTS_SCHEMA


class WordTokenizer:
    """One id per word, [CLS]-like prefix and [SEP]-like suffix; counts the texts it encodes."""

    def __init__(self) -> None:
        self.prefix = [1]
        self.suffix = [2]
        self.pad_id = 0
        self.encoded = 0
        self.vocab: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        self.encoded += 1
        return [self.vocab.setdefault(w, len(self.vocab) + 3) for w in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        words = {i: w for w, i in self.vocab.items()}
        return " ".join(words[i] for i in ids)


def docstring_source(context: int = 64, max_tokens: int | None = 20_000, min_tokens: int = 4,
                     batch_size: int = 8) -> SourceConfig:
    cfg = load_config({"source": {
        "backbone": {"kind": "transformer_lens", "model": "", "config": BYTES.config},
        "hook": "blocks.0.hook_resid_post", "batch_size": batch_size,
        "inputs": {"kind": "python_docstrings", "context": context, "max_tokens": max_tokens,
                   "min_tokens": min_tokens}}})
    return cfg.source


def build(source: SourceConfig, seed: int = 0, tokenizer: Tokenizer | None = None) -> Inputs:
    return build_inputs(source, seed, Path("."), tokenizer or load_tokenizer(BYTES))


# --------------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------------


def test_docstrings_corpus_is_large_clean_and_sorted() -> None:
    docs = gather_python_docstrings()
    assert len(docs) > 3000
    assert docs == sorted(docs)  # deterministic order
    texts = [text for _, text in docs]
    assert len(set(texts)) == len(texts)  # deduplicated
    origins = {origin for origin, _ in docs}
    assert "json.dumps" in origins and "collections.OrderedDict" in origins
    # source files only, no test suites, IDE or demos
    assert not [o for o in origins if re.match(r"(test|idlelib|turtledemo)\b", o)]
    assert not [o for o in origins if ".test." in o or ".tests." in o]
    # cleaned: no common indentation left, no surrounding blank lines
    json_dumps = dict(docs)["json.dumps"]
    assert json_dumps.startswith("Serialize ``obj`` to a JSON formatted ``str``.")
    assert all(text == text.strip() for text in texts)
    assert gather_python_docstrings() == docs


def test_read_text_files_globs_and_origins(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "sub" / "c.md").write_text("héllo", encoding="utf-8")
    texts = read_text_files(["*.txt", "sub/c.md", str(tmp_path / "a.txt")], tmp_path)
    assert texts == [(str(tmp_path / "a.txt"), "first"), (str(tmp_path / "b.txt"), "second"),
                     (str(tmp_path / "sub" / "c.md"), "héllo")]
    with pytest.raises(ConfigError, match=r"no file matches 'nothing\*\.txt'"):
        read_text_files(["nothing*.txt"], tmp_path)


def test_text_files_with_a_missing_path_fail_in_config(tmp_path: Path) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text("source:\n  inputs: {kind: text_files, paths: [missing.txt]}\n")
    with pytest.raises(ConfigError, match=r"source\.inputs\.paths\.0.*'missing\.txt'"):
        load_config(config_file)


# --------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------


def test_windows_follow_context_and_min_tokens(tmp_path: Path) -> None:
    (tmp_path / "long.txt").write_text("a" * 25, encoding="utf-8")  # 25 bytes
    (tmp_path / "short.txt").write_text("abc", encoding="utf-8")
    cfg = load_config({"source": {
        "backbone": {"kind": "transformer_lens", "model": "", "config": BYTES.config},
        "inputs": {"kind": "text_files", "paths": [str(tmp_path / "*.txt")], "context": 11,
                   "min_tokens": 4},
        "batch_size": 2}})
    inputs = build_inputs(cfg.source, 0, tmp_path, load_tokenizer(BYTES))
    # width 11 - 1 (BOS) = 10: "long" cuts into 10 + 10 + 5; "short" (3 < 4) is dropped
    rows = inputs.manifest.to_pylist()
    assert sorted(len(r["token_ids"]) for r in rows) == [6, 11, 11]
    assert {r["origin"] for r in rows} == {str(tmp_path / "long.txt")}
    assert sorted(r["text"] for r in rows) == ["a" * 5, "a" * 10, "a" * 10]
    assert inputs.n_examples == 3 and inputs.planned_rows == 25
    assert all(r["token_ids"][0] == 0 for r in rows)  # BOS first


def test_max_tokens_and_context_are_respected() -> None:
    source = docstring_source(context=64, max_tokens=5000, min_tokens=5)
    inputs = build(source)
    fed = inputs.manifest.column("token_ids").to_pylist()
    content = [len(ids) - 1 for ids in fed]
    assert inputs.planned_rows == sum(content) == 5000  # the corpus has far more
    assert inputs.n_examples == len(fed)
    assert max(len(ids) for ids in fed) <= 64
    assert min(content) >= 5
    assert sum(c == 63 for c in content) > 0  # long docstrings fill whole windows


def test_tokenises_only_what_max_tokens_needs() -> None:
    source = docstring_source(max_tokens=2000)
    tokenizer = WordTokenizer()
    inputs = build(source, tokenizer=tokenizer)
    # the last window is cut to the budget unless fewer than min_tokens (4) would be left
    assert 2000 - 4 < inputs.planned_rows <= 2000
    assert tokenizer.encoded < len(gather_python_docstrings()) / 10


def test_manifest_maps_ids_to_the_tokens_fed() -> None:
    tokenizer = WordTokenizer()
    inputs = build(docstring_source(context=32, max_tokens=3000), tokenizer=tokenizer)
    manifest = inputs.manifest
    assert manifest.schema.equals(INPUTS_SCHEMA)
    assert manifest.column("example_id").to_pylist() == list(range(inputs.n_examples))
    fed = manifest.column("token_ids").to_pylist()
    texts = manifest.column("text").to_pylist()
    docs = dict(gather_python_docstrings())
    seen = []
    for batch in inputs.batches:
        for row, example in enumerate(batch.example_id):
            if example < 0:
                continue
            seen.append(int(example))
            ids = fed[example]
            length = int(batch.lengths[row])
            assert length == len(ids)
            assert batch.tokens[row, :length].tolist() == ids
            assert (batch.tokens[row, length:] == tokenizer.pad_id).all()
            assert ids[0] == 1 and ids[-1] == 2  # prefix and suffix around the content
            assert tokenizer.encode(texts[example]) == ids[1:-1]
    assert sorted(seen) == list(range(inputs.n_examples))  # each id in exactly one batch
    # the origin names the docstring the window was cut from
    for origin, text in zip(manifest.column("origin").to_pylist()[:50], texts[:50],
                            strict=True):
        assert text.split()[0] in docs[origin].split()


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


def test_batches_have_fixed_shapes_and_filler_rows() -> None:
    source = docstring_source(context=48, max_tokens=7000, batch_size=8)
    inputs = build(source)
    n_real = 0
    for batch in inputs.batches:
        assert batch.tokens.shape == (8, 48) and batch.tokens.dtype == np.int32
        for name, dtype in (("lengths", np.int32), ("n_prefix", np.int32),
                            ("n_suffix", np.int32), ("example_id", np.int64)):
            column = getattr(batch, name)
            assert column.shape == (8,) and column.dtype == dtype
        real = batch.example_id >= 0
        n_real += int(real.sum())
        assert (batch.n_prefix[real] == 1).all() and (batch.n_suffix[real] == 0).all()
        assert (batch.lengths[~real] == 0).all() and (batch.tokens[~real] == 0).all()
        content = batch.lengths - batch.n_prefix - batch.n_suffix
        assert (content[real] >= 4).all()
    assert n_real == inputs.n_examples
    assert len(inputs.batches) == -(-inputs.n_examples // 8)
    assert sum(int((b.example_id < 0).sum()) for b in inputs.batches) < 8


def test_same_seed_same_batches_other_seed_other_order() -> None:
    source = docstring_source(max_tokens=8000)
    a, b, c = build(source, seed=3), build(source, seed=3), build(source, seed=4)
    assert len(a.batches) == len(b.batches)
    for x, y in zip(a.batches, b.batches, strict=True):
        for name, column in vars(x).items():
            np.testing.assert_array_equal(column, getattr(y, name))
    assert a.manifest.equals(b.manifest)
    assert a.manifest.column("origin").to_pylist() != c.manifest.column("origin").to_pylist()


def test_length_bucketing_cuts_padding_and_keeps_runs() -> None:
    batch_size = 4
    source = docstring_source(context=128, max_tokens=60_000, min_tokens=1,
                              batch_size=batch_size)
    inputs = build(source)

    def padding(batches: list[np.ndarray]) -> float:
        padded = sum(int(lengths.max()) * len(lengths) for lengths in batches)
        return 1 - sum(int(lengths.sum()) for lengths in batches) / padded

    real_lengths = [b.lengths[b.example_id >= 0] for b in inputs.batches]
    fed = np.array([len(ids) for ids in inputs.manifest.column("token_ids").to_pylist()])
    unsorted = [fed[i:i + batch_size] for i in range(0, len(fed), batch_size)]
    assert padding(real_lengths) < padding(unsorted) / 3
    # sorting happens within runs of RUN_BATCHES batches of the seeded shuffle
    run = RUN_BATCHES * batch_size
    for b in inputs.batches:
        ids = b.example_id[b.example_id >= 0]
        assert len(set((ids // run).tolist())) == 1


@pytest.mark.slow
def test_docstring_corpus_is_cached_per_python_and_survives_a_bad_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from thresher.modalities.text import corpora as inputs

    monkeypatch.setenv("HOME", str(tmp_path))
    inputs._stdlib_docstrings.cache_clear()
    parsed = tuple(inputs.gather_python_docstrings())  # parsed, and written to the cache
    assert len(parsed) > 1000
    (cache,) = (tmp_path / ".cache" / "thresher").glob("stdlib-docstrings-*.json")
    cache.write_text('[["origin", "a docstring from the cache"]]')  # what a later process reads
    inputs._stdlib_docstrings.cache_clear()
    assert inputs.gather_python_docstrings() == [("origin", "a docstring from the cache")]
    cache.write_text("{not json")  # a torn or foreign file: parsed again, and rewritten
    inputs._stdlib_docstrings.cache_clear()
    assert tuple(inputs.gather_python_docstrings()) == parsed
    inputs._stdlib_docstrings.cache_clear()
