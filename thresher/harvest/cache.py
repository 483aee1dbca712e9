"""TEMPORARY until config stops importing it (removed at the config merge)."""
from thresher.modalities.stored.source import describe_store, stored_hooks  # noqa: F401
