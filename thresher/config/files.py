"""Where a config's files are: input paths relative to the config file, and the run directory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from thresher import uri_io
from thresher.config.schema import Config, ConfigError


def config_dir(cfg: Config) -> Path:
    """Relative input paths are read from the config file's folder (the working dir otherwise)."""
    return Path(cfg.source_file).parent if cfg.source_file else Path.cwd()


def _resolve(pattern: str, base: Path, keep: Callable[[Path], bool]) -> list[Path]:
    p = Path(pattern).expanduser()
    if not p.is_absolute():
        p = base / p
    if any(c in str(p) for c in "*?["):
        anchor = Path(p.anchor)
        return sorted(q for q in anchor.glob(str(p.relative_to(anchor))) if keep(q))
    return [p] if keep(p) else []


def resolve_globs(pattern: str, base: Path) -> list[Path]:
    """Files named by `pattern` (globs allowed), relative to `base`."""
    return _resolve(pattern, base, Path.is_file)


def resolve_dirs(pattern: str, base: Path) -> list[Path]:
    """Folders named by `pattern` (globs allowed), relative to `base`."""
    return _resolve(pattern, base, Path.is_dir)


def input_files(patterns: Sequence[str], base: Path) -> list[Path]:
    """Every distinct file the patterns name, in pattern order; a pattern that matches nothing
    is a ConfigError (source.inputs.paths)."""
    files: list[Path] = []
    for pattern in patterns:
        matches = resolve_globs(pattern, Path(base))
        if not matches:
            raise ConfigError(f"source.inputs.paths: no file matches {pattern!r} (relative paths "
                              f"are read from {str(Path(base).resolve())!r})")
        files.extend(path for path in matches if path not in files)
    return files



def run_dir_of(cfg: Config) -> str:
    """Where the run's directory is: <run.out>/<run.name>, a local path or a URI."""
    out = cfg.run.out
    if uri_io.is_uri(out):
        return uri_io.join(out, cfg.run.name)  # keeps the URI's query options last
    return str(Path(out).expanduser() / cfg.run.name)

