"""Inputs of a text stream: corpora, tokenised windows, input batches and the inputs manifest.

A corpus is a list of (origin, text). `build_inputs` shuffles it with the run seed, tokenises
texts in that order until `max_tokens` content tokens are cut, and cuts each text into windows
that fill the backbone's context once its special tokens are added. One window is one example;
its id is its row in the manifest (`inputs.parquet`), which records the ids fed to the model.

Windows are grouped into input batches, one per backbone forward, as plain numpy arrays of fixed
shape (Ray Data stacks them): padding is cut by sorting runs of windows by length before
batching, and the seeded shuffle is kept by shuffling the batches afterwards.
"""

from __future__ import annotations

import ast
import functools
import os
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from thresher.analysis.parquet import INPUTS_SCHEMA
from thresher.config import ConfigError, SourceConfig, resolve_globs
from thresher.harvest.backbones import Tokenizer

# Standard-library folders that are not library code (tests, demos, the IDE, installed packages).
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "idlelib", "turtledemo", "site-packages",
                        "dist-packages", "__pycache__"})
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_BLOCK_NODES = (ast.If, ast.Try, ast.TryStar, ast.ExceptHandler, ast.With, ast.For, ast.While)
RUN_BATCHES = 32  # windows are length-sorted in runs of this many batches


# --------------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------------


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _docstrings_of(tree: ast.Module, module: str) -> list[tuple[str, str]]:
    """(qualified name, docstring) of the module and its classes and functions.

    `ast.get_docstring(clean=True)` cleans with `inspect.cleandoc`.
    """
    found: list[tuple[str, str]] = []

    def visit(node: ast.AST, qualname: str) -> None:
        if isinstance(node, _DOC_NODES):
            doc = ast.get_docstring(node, clean=True)
            if doc and doc.strip():
                found.append((qualname, doc.strip()))
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, f"{qualname}.{child.name}")
            elif isinstance(child, _BLOCK_NODES):
                visit(child, qualname)  # definitions under `if sys.platform ...:` and the like

    visit(tree, module)
    return found


@functools.lru_cache(maxsize=1)
def _stdlib_docstrings() -> tuple[tuple[str, str], ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    seen: set[str] = set()
    docs: list[tuple[str, str]] = []
    for path in sorted(files):
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue  # templates and files for other Python versions
        for origin, doc in _docstrings_of(tree, _module_name(path, root)):
            if doc not in seen:
                seen.add(doc)
                docs.append((origin, doc))
    docs.sort()
    return tuple(docs)


def gather_python_docstrings() -> list[tuple[str, str]]:
    """Every distinct docstring of the running Python's standard library, as (origin, text).

    Read from the source files with `ast` (importing modules would run their side effects),
    cleaned with `inspect.cleandoc`, deduplicated and sorted; cached for the process.
    """
    return list(_stdlib_docstrings())


def read_text_files(paths: Sequence[str], base_dir: Path) -> list[tuple[str, str]]:
    """(file path, text) of every UTF-8 file named by `paths` (globs allowed), in order.

    Relative paths are read from `base_dir`; a file matched twice is read once.
    """
    texts: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for pattern in paths:
        matches = resolve_globs(pattern, Path(base_dir))
        if not matches:
            raise ConfigError(f"source.inputs.paths: no file matches {pattern!r} (relative paths "
                              f"are read from {str(Path(base_dir).resolve())!r})")
        for path in matches:
            if path in seen:
                continue
            seen.add(path)
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(f"source.inputs.paths: {str(path)!r} is not UTF-8 text "
                                  f"({exc})") from exc
            texts.append((str(path), text))
    return texts


def _corpus(source: SourceConfig, base_dir: Path) -> list[tuple[str, str]]:
    inputs = source.inputs
    if inputs.kind == "python_docstrings":
        return gather_python_docstrings()
    if inputs.kind == "text_files":
        return read_text_files(inputs.paths, base_dir)
    raise ConfigError(f"source.inputs.kind {inputs.kind!r} is not a text input; "
                      "valid: python_docstrings, text_files")


# --------------------------------------------------------------------------------------------
# Windows and batches
# --------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    batches: list[dict[str, np.ndarray]]  # one per backbone forward, fixed shapes
    manifest: pa.Table  # example_id, origin, text, token_ids (as fed, special tokens included)
    n_examples: int
    n_tokens: int  # content tokens: the rows the harvest produces


def _cut_windows(texts: list[tuple[str, str]], order: np.ndarray, tokenizer: Tokenizer,
                 width: int, min_tokens: int,
                 max_tokens: int | None) -> tuple[list[str], list[list[int]]]:
    """Content windows of the texts in `order`, stopping once `max_tokens` are cut."""
    origins: list[str] = []
    windows: list[list[int]] = []
    total = 0
    budget = max_tokens if max_tokens is not None else float("inf")
    for i in order:
        origin, text = texts[int(i)]
        ids = tokenizer.encode(text)
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
           n_prefix: int, n_suffix: int, pad_id: int) -> dict[str, np.ndarray]:
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
    return {
        "tokens": tokens,
        "lengths": lengths,
        "n_prefix": np.where(real, n_prefix, 0).astype(np.int32),
        "n_suffix": np.where(real, n_suffix, 0).astype(np.int32),
        "example_id": example_id,
    }


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
    texts = _corpus(source, base_dir)
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
        schema=INPUTS_SCHEMA,
    )
    return Inputs(batches=batches, manifest=manifest, n_examples=len(fed),
                  n_tokens=int(sum(len(w) for w in windows)))
