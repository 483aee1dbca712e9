"""Text corpora: a list of (origin, text), or (origin, token ids) for pre-tokenised files.

`python_docstrings` is every distinct docstring of the running Python's standard library;
`text_files` and `token_files` are the files `source.inputs.paths` names (globs allowed).
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
from pathlib import Path

import numpy as np

from thresher.config import ConfigError, SourceConfig, input_files

# Standard-library folders that are not library code (tests, demos, the IDE, installed packages).
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "idlelib", "turtledemo", "site-packages",
                        "dist-packages", "__pycache__"})
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_BLOCK_NODES = (ast.If, ast.Try, ast.TryStar, ast.ExceptHandler, ast.With, ast.For, ast.While)


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


def read_corpus(source: SourceConfig, base_dir: Path) -> list[tuple[str, str | list[int]]]:
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
