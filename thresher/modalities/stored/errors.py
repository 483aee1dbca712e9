"""The error of an activation store that cannot be replayed."""

from __future__ import annotations

from thresher.config import ConfigError


class StoreError(ConfigError):
    """An activation store that cannot be replayed; the message says why and what to do."""
