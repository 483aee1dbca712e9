"""The error a user can act on, found inside Ray's wrappings."""

from __future__ import annotations

from thresher.config import ConfigError


def user_error(exc: BaseException) -> BaseException | None:
    """The error a user can act on inside a chain of Ray's wrappings, if there is one.

    ConfigError (and StoreError), a run directory or checkpoint that cannot be used, or a
    checkpoint that could not be written: their messages name the problem and the fix, which
    Ray's task and Ray Data's wrappers would otherwise bury under remote tracebacks.
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
            return _without_retry_note(current)
        current = (getattr(current, "cause", None) or current.__cause__
                   or current.__context__)
    return None


# Ray Data appends its retry advice to the message of an error raised in a map task
# (ray/data/_internal/util.py, _annotate_exception_with_retry_context); ours need none of it.
_RETRY_NOTE = "\nFailed to apply UDF transform after "


def _without_retry_note(exc: BaseException) -> BaseException:
    if exc.args and isinstance(exc.args[0], str) and _RETRY_NOTE in exc.args[0]:
        exc.args = (exc.args[0].split(_RETRY_NOTE, 1)[0], *exc.args[1:])
    return exc


def _is_ray_wrapper(exc: BaseException) -> bool:
    try:
        from ray.exceptions import RayError
    except ImportError:
        return False
    return isinstance(exc, RayError)
