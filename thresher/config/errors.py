"""The one error a config raises: what is wrong, where, and how to fix it."""

from thresher.errors import UserError


class ConfigError(UserError, ValueError):
    """A config that cannot run; the message says where and how to fix it."""
