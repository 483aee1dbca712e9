"""The package version, in a module of its own so that any module can read it without
importing the package (and with it the whole API)."""

__version__ = "0.1.0"  # keep equal to pyproject.toml
