"""The error a user can act on, found inside Ray's wrappings."""

from __future__ import annotations

from thresher.errors import UserError


def user_error(exc: BaseException) -> UserError | None:
    """The error a user can act on (a `UserError`) inside a chain of Ray's wrappings, if there
    is one: its message names the problem and the fix, which Ray's task wrappers would
    otherwise bury under remote tracebacks."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # Ray's task errors are instances of their cause's class too: look inside them.
        if isinstance(current, UserError) and not _is_ray_wrapper(current):
            return current
        current = (getattr(current, "cause", None) or current.__cause__
                   or current.__context__)
    return None


def _is_ray_wrapper(exc: BaseException) -> bool:
    from ray.exceptions import RayError

    return isinstance(exc, RayError)
