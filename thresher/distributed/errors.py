"""The error a user can act on, found inside Ray's wrappings."""

from __future__ import annotations

from thresher.config import ConfigError


def user_error(exc: BaseException) -> BaseException | None:
    """The error a user can act on inside a chain of Ray's wrappings, if there is one.

    ConfigError (and StoreError), a run directory or checkpoint that cannot be used, or a
    checkpoint that could not be written: their messages name the problem and the fix, which
    Ray's task wrappers would otherwise bury under remote tracebacks.
    """
    from thresher.rundir import RunDirError
    from thresher.train.checkpoint import CheckpointError
    from thresher.train.loop import CheckpointWriteError

    wanted = (ConfigError, RunDirError, CheckpointError, CheckpointWriteError)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # Ray's task errors are instances of their cause's class too: look inside them.
        if isinstance(current, wanted) and not _is_ray_wrapper(current):
            return current
        current = (getattr(current, "cause", None) or current.__cause__
                   or current.__context__)
    return None


def _is_ray_wrapper(exc: BaseException) -> bool:
    try:
        from ray.exceptions import RayError
    except ImportError:
        return False
    return isinstance(exc, RayError)
