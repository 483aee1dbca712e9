"""Inputs of a stream: corpora, tokenised windows, input batches and the inputs manifest.

`prepare_inputs` is the one entry point of both executors: it dispatches on the modality
(text here; images in `thresher.harvest.vision`, EEG in `thresher.harvest.eeg`, a replayed
cache in `thresher.harvest.cache`) and returns `Inputs`. Image batches hold references that
`decode_batch` turns into pixels (the CPU stage); every other batch goes to the backbone as is.

Text:

A corpus is a list of (origin, text). `build_inputs` shuffles it with the run seed, tokenises
texts in that order until `max_tokens` content tokens are cut, and cuts each text into windows
that fill the backbone's context once its special tokens are added. One window is one example;
its id is its row in the stream's manifest (`inputs/<stream_id>.parquet`), which records the ids
fed to the model.

Windows are grouped into input batches, one per backbone forward, as plain numpy arrays of fixed
shape (Ray Data stacks them): padding is cut by sorting runs of windows by length before
batching, and the seeded shuffle is kept by shuffling the batches afterwards.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from thresher.analysis.parquet import INPUTS_SCHEMA, write_table_atomic
from thresher.config import (
    EEG_BACKBONES,
    IMAGE_BACKBONES,
    TEXT_BACKBONES,
    ConfigError,
    SourceConfig,
    input_files,
)
from thresher.harvest.backbones import Tokenizer

if TYPE_CHECKING:
    from thresher.harvest.vision import ImageSpec

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
    """The corpus, from a per-user cache file when one matches this Python: parsing the whole
    standard library takes seconds, and every harvesting process (a Ray actor per run) needs
    it."""
    root = Path(sysconfig.get_paths()["stdlib"])
    key = hashlib.sha1(f"{CORPUS_VERSION}:{sys.version}:{root}".encode()).hexdigest()[:16]
    cache = Path.home() / ".cache" / "thresher" / f"stdlib-docstrings-{key}.json"
    try:
        return tuple((str(o), str(d)) for o, d in json.loads(cache.read_text("utf-8")))
    except (OSError, ValueError, TypeError):
        pass  # absent or unreadable: parse again
    docs = _parse_stdlib_docstrings(root)
    with contextlib.suppress(OSError):  # a read-only home only costs the parse next time
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(docs), "utf-8")
        os.replace(tmp, cache)
    return docs


CORPUS_VERSION = 1  # bump when _parse_stdlib_docstrings changes what it returns


def _parse_stdlib_docstrings(root: Path) -> tuple[tuple[str, str], ...]:
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
    for path in input_files(paths, base_dir):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"source.inputs.paths: {str(path)!r} is not UTF-8 text "
                              f"({exc})") from exc
        texts.append((str(path), text))
    return texts


def read_token_files(paths: Sequence[str], base_dir: Path) -> list[tuple[str, list[int]]]:
    """(file path, token ids) of every .npy file of integer ids named by `paths`, in order."""
    found: list[tuple[str, list[int]]] = []
    for path in input_files(paths, base_dir):
        try:
            ids = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"source.inputs.paths: {str(path)!r} is not a .npy array of "
                              f"token ids ({exc})") from exc
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ConfigError(f"source.inputs.paths: {str(path)!r} holds {ids.dtype} of "
                              f"shape {ids.shape}; token_files are 1-D integer arrays")
        found.append((str(path), ids.astype(np.int64).tolist()))
    return found


def _corpus(source: SourceConfig, base_dir: Path) -> list[tuple[str, str | list[int]]]:
    inputs = source.inputs
    if inputs.kind == "python_docstrings":
        return list(gather_python_docstrings())
    if inputs.kind == "text_files":
        return list(read_text_files(inputs.paths, base_dir))
    if inputs.kind == "token_files":
        return list(read_token_files(inputs.paths, base_dir))
    raise ConfigError(f"source.inputs.kind {inputs.kind!r} is not a text input; "
                      "valid: python_docstrings, text_files, token_files")


# --------------------------------------------------------------------------------------------
# Windows and batches
# --------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    batches: list[dict[str, np.ndarray]]  # one per backbone forward, fixed shapes
    # text: example_id, origin, text, token_ids (as fed, special tokens included); images and
    # EEG: see IMAGE_INPUTS_SCHEMA / EEG_INPUTS_SCHEMA; a replayed store: the stored manifest.
    manifest: pa.Table | None
    n_examples: int
    n_tokens: int  # the rows the harvest produces (an estimate for images)
    unreadable: int = 0  # inputs skipped while listing (a corrupt EDF); decoding counts more
    decode: ImageSpec | None = None  # image batches hold references until decode_batch


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


# --------------------------------------------------------------------------------------------
# Every modality: the entry point both executors call
# --------------------------------------------------------------------------------------------


def modality(source: SourceConfig) -> str:
    kind = source.backbone.kind
    if kind in TEXT_BACKBONES:
        return "text"
    if kind in IMAGE_BACKBONES:
        return "image"
    if kind in EEG_BACKBONES:
        return "eeg"
    return "stored"


def _image_rows_per_example(source: SourceConfig) -> int:
    """Rows one image gives (for progress only; 1 where unknown without the model)."""
    if source.hooks == ("embedding",) or source.tokens == "cls":
        return 1
    backbone = source.backbone
    try:
        if backbone.kind == "open_clip":
            from thresher.harvest.vision import _open_clip_model_cfg

            vision = _open_clip_model_cfg(backbone)["vision_cfg"]
            size, patch = int(vision.get("image_size", 224)), int(vision.get("patch_size", 0))
        else:
            from thresher.harvest.vision import _hf_vision_config

            config = _hf_vision_config(backbone)
            size, patch = int(config.image_size), int(config.patch_size)
    except (ConfigError, TypeError, ValueError):
        return 1
    if patch <= 0:
        return 1
    return (size // patch) ** 2 + (1 if source.tokens == "all" else 0)


def prepare_inputs(source: SourceConfig, seed: int, base_dir: Path) -> Inputs:
    """The input batches and manifest of any source; the same for the same seed."""
    kind = modality(source)
    if kind == "text":
        from thresher.harvest.backbones import load_tokenizer

        return build_inputs(source, seed, base_dir, load_tokenizer(source.backbone))
    if kind == "image":
        from thresher.harvest.vision import build_image_inputs, image_spec

        batches, manifest = build_image_inputs(source, seed, base_dir)
        n = manifest.num_rows
        return Inputs(batches=batches, manifest=manifest, n_examples=n,
                      n_tokens=n * _image_rows_per_example(source),
                      decode=image_spec(source, base_dir))
    if kind == "eeg":
        from thresher.harvest.eeg import build_eeg_inputs

        batches, manifest, unreadable = build_eeg_inputs(source, seed, base_dir)
        n = manifest.num_rows
        per_window = (len(manifest.column("channels")[0]) *
                      int(manifest.column("num_patches")[0].as_py())) if n else 0
        return Inputs(batches=batches, manifest=manifest, n_examples=n,
                      n_tokens=n * per_window, unreadable=unreadable)
    if source.backbone.kind == "synthetic":  # rows made in the backbone, one batch a block
        from thresher.harvest.synthetic import synthetic_batches

        batches, rows = synthetic_batches(source)
        return Inputs(batches=batches, manifest=None, n_examples=rows, n_tokens=rows)
    from thresher.harvest.cache import build_stored_inputs

    batches, stored_manifest, rows = build_stored_inputs(source, base_dir)
    n = stored_manifest.num_rows if stored_manifest is not None else 0
    return Inputs(batches=batches, manifest=stored_manifest, n_examples=n, n_tokens=rows)


def decode_batch(inputs: Inputs, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The CPU stage for one batch: image references -> pixels; other batches pass through."""
    if inputs.decode is None:
        return batch
    from thresher.harvest.vision import decode_images

    return decode_images(batch, inputs.decode)


def manifest_path(run_dir: str | Path, stream_id: str) -> Path:
    """A stream's inputs manifest, inputs/<stream_id>.parquet: one per stream, as the streams
    of a run may read different inputs of different modalities."""
    return Path(run_dir) / "inputs" / f"{stream_id}.parquet"


def write_manifest(run_dir: str | Path, stream_id: str,
                   manifest: pa.Table | None) -> Path | None:
    """The stream's manifest: the text schema for text, the modality's own otherwise."""
    if manifest is None:
        return None
    if manifest.schema.names == INPUTS_SCHEMA.names:
        manifest = manifest.cast(INPUTS_SCHEMA)
    return write_table_atomic(manifest, manifest_path(run_dir, stream_id))
