"""The package's own source files, as the structural tests read them (layering, import graph,
the scan for calls that could run code)."""

from __future__ import annotations

from pathlib import Path

from tests.paths import PACKAGE


def source_files() -> list[Path]:
    """Every module of the package, in a fixed order."""
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    """thresher/stream/log.py -> thresher.stream.log; a package's __init__ is the package."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)
